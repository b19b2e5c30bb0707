"""`embedstack ingest`: files -> store -> durable queue -> the same pipeline, with progress."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import click

from embedstack.cli.common import (
    Command,
    config_option,
    data_dir_option,
    load_settings,
    setting_default,
)
from embedstack.config import ENV_PREFIX, Settings
from embedstack.errors import NotFound
from embedstack.types import ChunkingSpec, ChunkMode

if TYPE_CHECKING:
    from embedstack.serving.services import Services
    from embedstack.storage.store import DocumentRow

CHUNKING = ChunkingSpec()
JOB_DOCUMENTS = 256  # documents per queue job: progress granularity and retry unit


@click.command(cls=Command)
@click.argument("path", type=click.Path(path_type=Path, exists=True))
@click.option("-c", "--collection", required=True, help="Collection to add the documents to.")
@click.option("--create/--no-create", default=True, show_default=True,
              help="Create the collection if missing.")  # fmt: skip
@click.option("--model", default=None,
              help=f"Model of a new collection (default: {ENV_PREFIX}DEFAULT_MODEL, else "
              f"{setting_default('default_model')}).")  # fmt: skip
@click.option("--chunk-mode", type=click.Choice(get_args(ChunkMode)), default=CHUNKING.mode,
              show_default=True,
              help="Chunks of a new collection: token windows or sentences.")  # fmt: skip
@click.option("--chunk-size", type=click.IntRange(1), default=None,
              help=f"Tokens per chunk of a new collection, special ones included [default: "
                   f"{CHUNKING.size}, or the model's limit if smaller].")  # fmt: skip
@click.option("--chunk-overlap", type=click.IntRange(0), default=None,
              help=f"Tokens shared by neighbouring chunks [default: {CHUNKING.overlap} per "
                   f"{CHUNKING.size} of chunk size].")  # fmt: skip
@click.option("--job-size", type=click.IntRange(1), default=JOB_DOCUMENTS, show_default=True,
              help="Documents per queue job.")  # fmt: skip
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Process the jobs here with a progress bar.")  # fmt: skip
@data_dir_option
@config_option
def ingest(
    path: Path, collection: str, create: bool, model: str | None, chunk_mode: str,
    chunk_size: int | None, chunk_overlap: int | None, job_size: int, wait: bool,
    data_dir: Path | None, config: Path | None,
) -> None:  # fmt: skip
    """Add files to a collection through the durable queue and the ingest pipeline.

    PATH is a .txt/.md file (one document), a folder of them, or a JSONL file with one
    {"id", "text", "metadata"} object per line. Unchanged documents cost no model time.
    A running server on the same --data-dir serves the new vectors within a moment.
    """
    settings = load_settings(config, data_dir=data_dir)
    chunking = {"mode": chunk_mode, "size": chunk_size, "overlap": chunk_overlap}
    run_ingest(settings, path, collection, create, model, chunking, job_size, wait)


def run_ingest(
    settings: Settings, path: Path, collection: str, create: bool, model: str | None,
    chunking: dict[str, Any], job_size: int, wait: bool,
) -> None:  # fmt: skip
    from embedstack.serving.services import Services

    services = Services.build(settings)
    try:
        asyncio.run(_ingest(services, path, collection, create, model, chunking, job_size, wait))
    finally:
        services.models.close()
        services.queue.close()
        services.store.close()


async def _ingest(
    services: Services, path: Path, collection: str, create: bool, model: str | None,
    chunking: dict[str, Any], job_size: int, wait: bool,
) -> None:  # fmt: skip
    try:
        record = services.collections.get(collection)
    except NotFound:
        if not create:
            raise
        record = services.store.get_collection(
            services.collections.create(collection, model=model, chunking=chunking).name
        )
    from embedstack.ingest.chunking import content_hash
    from embedstack.ingest.sources import read_documents
    from embedstack.storage.store import DocumentRow

    jobs: list[tuple[str, int]] = []
    batch: list[DocumentRow] = []
    total = 0
    for doc in read_documents(path):
        batch.append(
            DocumentRow(doc.id, doc.text, doc.metadata, content_hash(doc.text, doc.metadata))
        )
        if len(batch) >= job_size:
            jobs.append(_submit(services, record.name, batch))
            total += len(batch)
            batch = []
    if batch:
        jobs.append(_submit(services, record.name, batch))
        total += len(batch)
    print(f"queued {total} documents in {len(jobs)} jobs for collection {record.name!r}")
    if wait and jobs:
        await _drain(services, jobs, total)


def _submit(services: Services, collection: str, rows: list[DocumentRow]) -> tuple[str, int]:
    from embedstack.ingest.submit import submit_documents

    return submit_documents(services.store, services.queue, collection, rows).job_id, len(rows)


async def _drain(services: Services, jobs: list[tuple[str, int]], total: int) -> None:
    """Work the queue here until our jobs are finished, showing documents and chunks/s."""
    from rich.progress import (
        BarColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    stop = asyncio.Event()
    worker = services.make_worker("cli-ingest")
    runner = asyncio.create_task(worker.run(stop))
    started = time.perf_counter()
    columns = (
        TextColumn("[bold]ingest"), BarColumn(), TextColumn("{task.completed}/{task.total} docs"),
        TextColumn("{task.fields[rate]}"), TimeElapsedColumn(), TimeRemainingColumn(),
    )  # fmt: skip
    failed: list[str] = []
    with Progress(*columns) as progress:
        task = progress.add_task("ingest", total=total, rate="")
        pending = dict(jobs)
        chunks = 0
        while pending:
            await asyncio.sleep(0.25)
            for job_id in list(pending):
                job = services.queue.get(job_id)
                if job.status in ("done", "dead"):
                    progress.advance(task, pending.pop(job_id))
                    result = job.result or {}
                    chunks += int(result.get("chunks_embedded", 0)) + int(
                        result.get("chunks_reused", 0)
                    )
                    if job.status == "dead":
                        failed.append(f"{job_id}: {job.error}")
            rate = chunks / max(1e-9, time.perf_counter() - started)
            progress.update(task, rate=f"{chunks} chunks, {rate:,.0f} chunks/s")
    stop.set()
    await runner
    for b in services.batchers.values():
        await b.stop()
    if failed:
        raise SystemExit("some jobs failed:\n" + "\n".join(failed))
