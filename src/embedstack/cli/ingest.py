"""`embedstack ingest`: files -> store -> durable queue -> the same pipeline, with progress."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from embedstack.config import Settings
from embedstack.errors import NotFound
from embedstack.ingest.chunking import content_hash
from embedstack.ingest.sources import read_documents
from embedstack.ingest.submit import submit_documents
from embedstack.serving.services import Services
from embedstack.storage.store import DocumentRow


def run_ingest(
    settings: Settings, path: Path, collection: str, create: bool, model: str | None,
    chunking: dict[str, Any], job_size: int, wait: bool,
) -> None:  # fmt: skip
    services = Services.build(settings)
    try:
        asyncio.run(_ingest(services, path, collection, create, model, chunking, job_size, wait))
    finally:
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
    return submit_documents(services.store, services.queue, collection, rows).job_id, len(rows)


async def _drain(services: Services, jobs: list[tuple[str, int]], total: int) -> None:
    """Work the queue here until our jobs are finished, showing documents and chunks/s."""
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
