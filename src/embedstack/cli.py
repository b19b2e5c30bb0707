"""The embedstack command line: serve, worker, ingest, query."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

import click
import orjson

from embedstack.config import Settings
from embedstack.errors import EmbedStackError

DATA_DIR_HELP = "Folder for the store, queue and index snapshots (created if missing)."


def _settings(config: Path | None, **overrides: Any) -> Settings:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    settings = Settings.load(config, **overrides)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if settings.torch_threads:
        import torch

        torch.set_num_threads(settings.torch_threads)
    return settings


config_option = click.option(
    "--config", type=click.Path(path_type=Path, exists=True, dir_okay=False), default=None,
    help="TOML file with settings (EMBEDSTACK_* environment variables and flags override it).",
)  # fmt: skip
data_dir_option = click.option(
    "--data-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
    help=DATA_DIR_HELP,
)  # fmt: skip


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """embedstack: a self-hosted embedding stack.

    Start the server with `embedstack serve`, add documents over HTTP or with
    `embedstack ingest`, and search with `embedstack query`.
    """


@main.command()
@click.option("--host", default=None, help="Address to listen on (default 127.0.0.1).")
@click.option("--port", type=int, default=None, help="Port to listen on (default 8080).")
@data_dir_option
@click.option("--workers", type=int, default=None, help="In-process ingest workers (default 1).")
@config_option
def serve(
    host: str | None, port: int | None, data_dir: Path | None, workers: int | None,
    config: Path | None,
) -> None:  # fmt: skip
    """Run the HTTP server with in-process ingest workers.

    Loads the bundled all-MiniLM-L6-v2 model, opens every collection's index (from its snapshot
    plus the store's later changes) and serves the API; see /docs for it.
    """
    import uvicorn

    from embedstack.serving.app import create_app
    from embedstack.serving.services import Services

    settings = _settings(config, host=host, port=port, data_dir=data_dir, workers=workers)
    try:
        services = Services.build(settings)
    except ValueError as exc:  # a setting this machine cannot honour: say which, no traceback
        raise click.ClickException(str(exc)) from exc
    app = create_app(services)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        access_log=False, timeout_graceful_shutdown=10,
    )  # fmt: skip


@main.command()
@data_dir_option
@click.option("--concurrency", type=int, default=1, help="Jobs processed at once (default 1).")
@config_option
def worker(data_dir: Path | None, concurrency: int, config: Path | None) -> None:
    """Run ingest workers as a separate process on a data dir a server also uses.

    Jobs are leased from the durable queue; a killed worker's jobs become visible again after
    the visibility timeout and are finished by another worker, exactly once in the index.
    """
    from embedstack.serving.services import Services

    settings = _settings(config, data_dir=data_dir)
    services = Services.build(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        workers = [services.make_worker(f"proc{os.getpid()}-{i}") for i in range(concurrency)]
        click.echo(f"embedstack worker: {concurrency} worker(s) on {settings.data_dir}", err=True)
        await asyncio.gather(*(w.run(stop) for w in workers))
        await services.close()

    asyncio.run(run())


@main.command()
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("-c", "--collection", required=True, help="Collection to add the documents to.")
@click.option("--create/--no-create", default=True, help="Create the collection if missing.")
@click.option("--model", default=None, help="Model for a new collection (default: bundled).")
@click.option("--chunk-mode", type=click.Choice(["tokens", "sentences"]), default="tokens")
@click.option(
    "--chunk-size", type=int, default=256, help="Tokens per chunk, special ones included."
)
@click.option("--chunk-overlap", type=int, default=32, help="Tokens shared by neighbouring chunks.")
@click.option("--job-size", type=int, default=256, help="Documents per queue job.")
@click.option("--wait/--no-wait", default=True, help="Process the jobs here with a progress bar.")
@data_dir_option
@config_option
def ingest(
    path: Path, collection: str, create: bool, model: str | None, chunk_mode: str,
    chunk_size: int, chunk_overlap: int, job_size: int, wait: bool, data_dir: Path | None,
    config: Path | None,
) -> None:  # fmt: skip
    """Add files to a collection through the durable queue and the ingest pipeline.

    PATH is a .txt/.md file (one document), a folder of them, or a JSONL file with one
    {"id", "text", "metadata"} object per line. Unchanged documents cost no model time.
    A running server on the same --data-dir serves the new vectors within a moment.
    """
    from embedstack.cli_ingest import run_ingest

    settings = _settings(config, data_dir=data_dir)
    chunking = {"mode": chunk_mode, "size": chunk_size, "overlap": chunk_overlap}
    try:
        run_ingest(settings, path, collection, create, model, chunking, job_size, wait)
    except EmbedStackError as exc:
        raise click.ClickException(exc.message) from exc


@main.command()
@click.argument("text")
@click.option("-c", "--collection", required=True, help="Collection to search.")
@click.option("-k", type=int, default=5, help="How many hits.")
@click.option(
    "--filter", "filter_json", default=None, help='Metadata filter, e.g. \'{"lang": "en"}\'.'
)
@click.option("--group-by-document", is_flag=True, help="Best chunk of each of the top documents.")
@click.option("--url", default="http://127.0.0.1:8080", help="Server to ask.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")
def query(
    text: str, collection: str, k: int, filter_json: str | None, group_by_document: bool,
    url: str, as_json: bool,
) -> None:  # fmt: skip
    """Search a collection on a running server and print the hits as a table."""
    from rich.console import Console
    from rich.table import Table

    from embedstack.cli_http import call

    body: dict[str, Any] = {"text": text, "k": k}
    if filter_json:
        try:
            body["filter"] = orjson.loads(filter_json)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"--filter is not valid JSON: {exc}") from exc
    if group_by_document:
        body["group_by"] = "document"
    data = call("POST", f"{url}/v1/collections/{collection}/query", body)
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"{collection}: {text!r} ({data['took_ms']} ms)")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("document")
    table.add_column("text", overflow="fold")
    for i, hit in enumerate(data["hits"], start=1):
        snippet = " ".join(hit["text"].split())[:200]
        table.add_row(str(i), f"{hit['score']:.4f}", hit["document_id"], snippet)
    Console().print(table)


def _register() -> None:
    from embedstack.cli_eval import eval_command
    from embedstack.cli_models import models
    from embedstack.cli_ops import plan, tune
    from embedstack.cli_upgrade import retire, rollback, upgrade

    main.add_command(models)
    for command in (upgrade, rollback, retire, tune, plan, eval_command):
        main.add_command(command)


_register()
