"""`embedstack serve | worker`: the HTTP server, and ingest workers as their own process."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import click

from embedstack.cli.common import (
    Command,
    config_option,
    data_dir_option,
    load_settings,
    setting_default,
)
from embedstack.config import ENV_PREFIX

WORKER_CONCURRENCY = 1  # a worker process's own count: the server's `workers` setting may be 0


@click.command(cls=Command)
@click.option("--host", default=None,
              help=f"Address to listen on (default: {ENV_PREFIX}HOST, else "
              f"{setting_default('host')}).")  # fmt: skip
@click.option("--port", type=int, default=None,
              help=f"Port to listen on (default: {ENV_PREFIX}PORT, else "
              f"{setting_default('port')}).")  # fmt: skip
@data_dir_option
@click.option("--workers", type=int, default=None,
              help=f"In-process ingest workers (default: {ENV_PREFIX}WORKERS, else "
              f"{setting_default('workers')}).")  # fmt: skip
@config_option
def serve(
    host: str | None, port: int | None, data_dir: Path | None, workers: int | None,
    config: Path | None,
) -> None:  # fmt: skip
    """Run the HTTP server with in-process ingest workers.

    Loads the bundled all-MiniLM-L6-v2 model, opens every collection's index (from its snapshot
    plus the store's later changes) and serves the API; see /docs for it. A setting this
    machine cannot honour stops it at startup with one line saying which.
    """
    import uvicorn

    from embedstack.serving.app import create_app
    from embedstack.serving.services import Services

    settings = load_settings(config, host=host, port=port, data_dir=data_dir, workers=workers)
    app = create_app(Services.build(settings))
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        access_log=False, timeout_graceful_shutdown=10,
    )  # fmt: skip


@click.command(cls=Command)
@data_dir_option
@click.option("--concurrency", type=click.IntRange(1), default=WORKER_CONCURRENCY,
              show_default=True, help="Jobs processed at once.")  # fmt: skip
@config_option
def worker(data_dir: Path | None, concurrency: int, config: Path | None) -> None:
    """Run ingest workers as a separate process on a data dir a server also uses.

    Jobs are leased from the durable queue; a killed worker's jobs become visible again after
    the visibility timeout and are finished by another worker, exactly once in the index.
    """
    from embedstack.serving.services import Services

    settings = load_settings(config, data_dir=data_dir)
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
