"""`embedstack ingest`: files -> store -> durable queue -> the same pipeline, with progress."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass
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
from embedstack.errors import InvalidInput, NotFound
from embedstack.types import ChunkingSpec, ChunkMode, Document

if TYPE_CHECKING:
    from embedstack.ingest.records import Rejected
    from embedstack.serving.services import Services
    from embedstack.storage.store import CollectionRecord, DocumentRow

CHUNKING = ChunkingSpec()
JOB_DOCUMENTS = 256  # documents per queue job: progress granularity and retry unit


@click.command(cls=Command)
@click.argument("path", required=False, type=click.Path(path_type=Path, exists=True))
@click.option("--from", "source", metavar="URL", default=None,
              help="Consume records instead of reading PATH: kafka://HOST:PORT/TOPIC, "
                   "redis://HOST:PORT/STREAM or postgresql://USER@HOST:PORT/DB?table=T"
                   "[&updated=COLUMN]. Needs the collection's record template.")  # fmt: skip
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
@click.option(
    "--record-id",
    default=None,
    help="Record template of a new collection: the field that is the document id.",
)
@click.option("--record-text", multiple=True,
              help="Record template: a field that forms the text (repeat or comma-separate; "
                   "joined by newlines).")  # fmt: skip
@click.option(
    "--record-metadata",
    multiple=True,
    help="Record template: a field kept as metadata (repeat or comma-separate).",
)
@click.option(
    "--max-records",
    type=click.IntRange(1),
    default=None,
    help="--from: stop after this many records [default: no limit].",
)
@click.option(
    "--idle-timeout",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    help="--from: stop after this many seconds without a record.",
)
@click.option("--group", default=None,
              help="--from kafka/redis: consumer group, whose committed position is where the "
                   "next run starts [default: embedstack-<collection>].")  # fmt: skip
@click.option("--job-size", type=click.IntRange(1), default=JOB_DOCUMENTS, show_default=True,
              help="Documents per queue job.")  # fmt: skip
@click.option("--wait/--no-wait", default=True, show_default=True,
              help="Process the jobs here with a progress bar.")  # fmt: skip
@data_dir_option
@config_option
def ingest(
    path: Path | None, source: str | None, collection: str, create: bool, model: str | None,
    chunk_mode: str, chunk_size: int | None, chunk_overlap: int | None, record_id: str | None,
    record_text: tuple[str, ...], record_metadata: tuple[str, ...], max_records: int | None,
    idle_timeout: float, group: str | None, job_size: int, wait: bool, data_dir: Path | None,
    config: Path | None,
) -> None:  # fmt: skip
    """Add files, or records from a stream or table, to a collection through the durable
    queue and the ingest pipeline.

    PATH is a file or a folder of them: .txt (one document), .md/.rst (one document per
    section, with its heading path as metadata "section"), .html (main text per section,
    "title" and "section"), .pdf (one document per page, "page"), .jsonl ({"id", "text",
    "metadata"} per line, or any objects through the record template), .csv and .parquet
    (rows through the record template). With --from, records are consumed from Kafka, a
    Redis stream or a PostgreSQL table instead, and the position is committed only after
    their documents are stored and queued.

    An input that cannot be read (a corrupt PDF, a broken CSV row, a record without its id)
    is reported with where it was and why, and kept with the job of the inputs around it
    (GET /v1/jobs/ID lists it); the rest is ingested and the command then exits with
    status 1. Unchanged documents cost no model time. A running server on the same --data-dir
    serves the new vectors within a moment.
    """
    if (path is None) == (source is None):
        raise click.UsageError("give either PATH or --from URL")
    settings = load_settings(config, data_dir=data_dir)
    chunking = {"mode": chunk_mode, "size": chunk_size, "overlap": chunk_overlap}
    template = _template(record_id, record_text, record_metadata)
    stream = None
    if source is not None:
        stream = StreamOptions(source, group or f"embedstack-{collection}", max_records,
                               idle_timeout)  # fmt: skip
    run_ingest(settings, path, collection, create, model, chunking, job_size, wait, template,
               stream)  # fmt: skip


@dataclass(frozen=True)
class StreamOptions:
    url: str
    group: str
    max_records: int | None
    idle_timeout: float


def _template(
    record_id: str | None, text: tuple[str, ...], metadata: tuple[str, ...]
) -> dict[str, Any] | None:
    def split(values: tuple[str, ...]) -> list[str]:
        return [f.strip() for v in values for f in v.split(",") if f.strip()]

    if record_id is None and not text and not metadata:
        return None
    if record_id is None or not text:
        raise click.UsageError("a record template needs --record-id and --record-text")
    return {"id": record_id, "text": split(text), "metadata": split(metadata)}


def run_ingest(
    settings: Settings, path: Path | None, collection: str, create: bool, model: str | None,
    chunking: dict[str, Any], job_size: int, wait: bool, template: dict[str, Any] | None = None,
    stream: StreamOptions | None = None,
) -> None:  # fmt: skip
    from embedstack.serving.services import Services

    services = Services.build(settings)
    try:
        work = _ingest(services, path, collection, create, model, chunking, job_size, wait,
                       template, stream)  # fmt: skip
        asyncio.run(work)
    finally:
        services.models.close()
        services.queue.close()
        services.store.close()


async def _ingest(
    services: Services, path: Path | None, collection: str, create: bool, model: str | None,
    chunking: dict[str, Any], job_size: int, wait: bool, template: dict[str, Any] | None,
    stream: StreamOptions | None,
) -> None:  # fmt: skip
    try:
        record = services.collections.get(collection)
    except NotFound:
        if not create:
            raise
        created = services.collections.create(
            collection, model=model, chunking=chunking, template=template
        )
        record = services.store.get_collection(created.name)
    else:
        _check_template(record, template)
    from embedstack.ingest.records import Rejected
    from embedstack.ingest.sources import read_documents

    jobs: list[tuple[str, int]] = []
    rejected: list[Rejected] = []
    submit = _Submitter(services, record.name, job_size, jobs)
    if stream is not None:
        _consume(services, record, stream, submit, rejected)
    else:
        assert path is not None
        made: dict[str, set[str]] = {}  # file -> the ids of the documents it made this time
        for item in read_documents(path, record.config.record):
            if isinstance(item, Rejected):
                _report(item, rejected, submit)
                continue
            submit.add(item)
            source = item.metadata.get("source")
            if isinstance(source, str):
                made.setdefault(source, set()).add(item.id)
    submit.flush()
    gone = _drop_stale(services, record.name, made) if stream is None else 0
    print(
        f"queued {submit.total} documents in {len(jobs)} jobs for collection {record.name!r}"
        + (f"; removed {gone} sections no longer in their files" if gone else "")
        + (f"; {len(rejected)} inputs rejected" if rejected else "")
    )
    if submit.rejected_jobs:
        print(f"the rejections are listed by job {', '.join(submit.rejected_jobs)} "
              "(GET /v1/jobs/ID)")  # fmt: skip
    if wait and jobs:
        await _drain(services, jobs, submit.total)
    if rejected:
        raise SystemExit(
            f"{len(rejected)} inputs were rejected (listed above); everything else was ingested"
        )


def _check_template(record: CollectionRecord, template: dict[str, Any] | None) -> None:
    """A template is part of the collection: given again, it must be the one it has."""
    if template is None:
        return
    from embedstack.ingest.records import parse_template

    if record.config.record != parse_template(template):
        have = record.config.record.to_json() if record.config.record else "none"
        raise InvalidInput(
            f"collection {record.name!r} exists with record template {have}: drop the "
            "--record-* options, or ingest into a new collection"
        )


def _drop_stale(services: Services, collection: str, made: dict[str, set[str]]) -> int:
    """Delete the documents an earlier ingest made from a file that this one read again but
    that it no longer makes (a section or page that is gone). Files not read are left alone."""
    gone = 0
    for source, ids in made.items():
        for doc_id in services.store.document_ids(collection, source):
            if doc_id not in ids:
                with contextlib.suppress(NotFound):
                    services.store.delete_document(collection, doc_id)
                    gone += 1
    return gone


def _report(item: Rejected, rejected: list[Rejected], submit: _Submitter) -> None:
    """Print a rejection and keep it with the next job, so the job lists it too."""
    rejected.append(item)
    submit.reject(item)
    click.echo(f"rejected {item}", err=True)


class _Submitter:
    """Documents -> store + queue in jobs of `job_size` inputs; add/flush return once durable.
    Rejected inputs travel with the job of the documents read around them (a job of
    rejections only if none follow), so each is listed by GET /v1/jobs/{id}."""

    def __init__(
        self, services: Services, collection: str, job_size: int, jobs: list[tuple[str, int]]
    ) -> None:
        self._services = services
        self._collection = collection
        self.job_size = job_size
        self._jobs = jobs
        self._batch: list[DocumentRow] = []
        self._rejected: list[Rejected] = []
        self.total = 0
        self.rejected_jobs: list[str] = []  # the jobs that list rejections

    def add(self, doc: Document) -> None:
        from embedstack.ingest.chunking import content_hash
        from embedstack.storage.store import DocumentRow

        meta = doc.metadata
        self._batch.append(DocumentRow(doc.id, doc.text, meta, content_hash(doc.text, meta)))
        self._full()

    def reject(self, item: Rejected) -> None:
        self._rejected.append(item)
        self._full()

    def _full(self) -> None:
        if len(self._batch) + len(self._rejected) >= self.job_size:
            self.flush()

    def flush(self) -> None:
        if self._batch or self._rejected:
            rows, rejected = self._batch, self._rejected
            self._jobs.append(_submit(self._services, self._collection, rows, rejected))
            if rejected:
                self.rejected_jobs.append(self._jobs[-1][0])
            self.total += len(rows)
            self._batch, self._rejected = [], []


def _consume(
    services: Services, record: CollectionRecord, stream: StreamOptions, submit: _Submitter,
    rejected: list[Rejected],
) -> None:  # fmt: skip
    from embedstack.ingest.streams import consume, open_source

    template = record.config.record
    if template is None:
        raise InvalidInput(
            f"collection {record.name!r} has no record template, so stream records cannot "
            "become documents: create a collection with --record-id and --record-text"
        )
    state = services.settings.data_dir / "sources" / f"{_slug(record.name, stream.url)}.json"
    source = open_source(
        stream.url, stream.group, id_column=template.id, state=state,
        known_ids=lambda name: services.store.document_ids(record.name, name),
    )  # fmt: skip

    def accept(docs: list[Document]) -> None:
        for doc in docs:
            submit.add(doc)
        submit.flush()  # durable before the source commits its position

    def delete(ids: list[str]) -> None:
        for doc_id in ids:
            with contextlib.suppress(NotFound):
                services.store.delete_document(record.name, doc_id)

    try:
        done = consume(
            source, template, accept, delete, lambda r: _report(r, rejected, submit),
            stream.max_records, stream.idle_timeout, submit.job_size,
        )  # fmt: skip
    finally:
        source.close()
    print(f"consumed {done.records} records from {source.name}; deleted {done.deleted} documents")


def _slug(collection: str, url: str) -> str:
    digest = hashlib.sha256(url.encode()).hexdigest()[:12]
    return f"{collection.replace(':', '_')}-{digest}"


def _submit(
    services: Services, collection: str, rows: list[DocumentRow], rejected: list[Rejected]
) -> tuple[str, int]:
    from embedstack.ingest.submit import submit_documents

    done = submit_documents(services.store, services.queue, collection, rows, rejected)
    return done.job_id, len(rows)


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
