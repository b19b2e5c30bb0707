"""The ingest worker: lease a job, chunk, skip unchanged, embed, store chunks + vectors, ack.

At-least-once delivery made idempotent: a document whose stored version is already indexed is
skipped, chunks whose text hash already has a vector in the space reuse it (no model time),
and the store refuses to write chunks for a document version that is no longer current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstack.errors import EmbedStackError, NotFound
from embedstack.inference.backend import ModelRegistry
from embedstack.inference.parity import check_parity
from embedstack.ingest.chunking import chunk_text, chunking_for_model
from embedstack.ingest.queue import Job, Queue
from embedstack.obs.metrics import Metrics
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import ChunkRow, CollectionRecord, DocumentChunks, DocumentRow, Store

log = logging.getLogger(__name__)

EmbedFn = Callable[[str, Sequence[str]], Awaitable[np.ndarray]]
WrittenFn = Callable[[str], Awaitable[None]]


@dataclass
class JobTotals:
    documents: int = 0
    chunks_embedded: int = 0
    chunks_reused: int = 0
    chunks_kept: int = 0
    chunks_removed: int = 0
    stale_documents: int = 0
    seq: int = 0
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class WorkerConfig:
    visibility_timeout: float = 120.0
    batch_documents: int = 64
    idle_poll_max: float = 0.5


class IngestWorker:
    def __init__(
        self,
        store: Store,
        queue: Queue,
        models: ModelRegistry,
        embed: EmbedFn,
        metrics: Metrics,
        config: WorkerConfig,
        on_written: WrittenFn | None = None,
        name: str | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._models = models
        self._embed = embed
        self._metrics = metrics
        self._config = config
        self._on_written = on_written
        self.name = name or f"worker-{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """New work was enqueued: stop idling."""
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        idle = 0.02
        while not stop.is_set():
            job = await asyncio.to_thread(
                self._queue.lease, self.name, self._config.visibility_timeout
            )
            if job is None:
                self._wake.clear()
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, timeout=idle, return_when="FIRST_COMPLETED")
                waiter.cancel()
                stopper.cancel()
                idle = min(idle * 2, self._config.idle_poll_max)
                continue
            idle = 0.02
            await self.handle(job)

    async def handle(self, job: Job) -> None:
        assert job.lease_id is not None
        heartbeat = asyncio.ensure_future(self._heartbeat(job.id, job.lease_id))
        try:
            totals = await self.process(job.payload)
        except asyncio.CancelledError:  # shutting down: give the job back, not to the timeout
            heartbeat.cancel()
            with contextlib.suppress(Exception):
                self._queue.release(job.id, job.lease_id)
            raise
        except Exception as exc:  # any failure: retry with backoff, then dead-letter
            heartbeat.cancel()
            message = exc.message if isinstance(exc, EmbedStackError) else repr(exc)
            if not isinstance(exc, EmbedStackError):
                log.exception("ingest job %s failed", job.id)
            delay = min(2.0**job.attempts, 60.0)
            status = await asyncio.to_thread(self._queue.fail, job.id, job.lease_id, message, delay)
            self._metrics.ingest_jobs.labels("failed" if status == "dead" else "retried").inc()
            return
        heartbeat.cancel()
        await asyncio.to_thread(self._queue.ack, job.id, job.lease_id, totals.as_dict())
        self._metrics.ingest_jobs.labels("done").inc()

    async def _heartbeat(self, job_id: str, lease_id: str) -> None:
        period = self._config.visibility_timeout / 3
        while True:
            await asyncio.sleep(period)
            await asyncio.to_thread(
                self._queue.extend, job_id, lease_id, self._config.visibility_timeout
            )

    async def process(self, payload: dict[str, Any]) -> JobTotals:
        """Index the job's documents into every active space of the collection.

        A back-fill job (payload "space") writes only that shadow space and leaves the
        documents' indexed mark alone; a normal job writes all active spaces (serving, shadow,
        previous) so a shadow is complete when its back-fill ends and a rollback loses nothing.
        """
        totals = JobTotals()
        name = str(payload["collection"])
        try:
            coll = await asyncio.to_thread(self._store.get_collection, name)
        except NotFound:
            totals.errors.append(f"collection {name!r} was deleted before indexing")
            return totals
        spaces = await asyncio.to_thread(self._store.spaces, name)
        backfill = payload.get("space")
        if backfill is not None:
            spaces = [s for s in spaces if s.space_id == backfill]
        ids = [str(i) for i in payload["documents"]]
        step = self._config.batch_documents
        for start in range(0, len(ids), step):
            docs = await asyncio.to_thread(
                self._store.get_documents, name, ids[start : start + step]
            )
            totals.documents += len(docs)
            todo = docs if backfill else [d for d in docs if d.indexed_hash != d.content_hash]
            for n, space in enumerate(spaces):
                if todo:
                    last = n == len(spaces) - 1 and backfill is None
                    await self._index_documents(coll, space, todo, totals, mark_indexed=last)
        if self._on_written is not None:
            await self._on_written(name)
        return totals

    async def _index_documents(
        self,
        coll: CollectionRecord,
        space: SpaceInfo,
        docs: list[DocumentRow],
        totals: JobTotals,
        mark_indexed: bool,
    ) -> None:
        if space.model:
            prepared = await self._embed_documents(coll, space, docs, totals)
        else:
            prepared = [_vector_document(d) for d in docs]
        result = await asyncio.to_thread(
            self._store.write_chunks, coll.name, space.space_id, prepared, mark_indexed
        )
        totals.chunks_kept += result.kept
        totals.chunks_removed += result.removed
        totals.stale_documents += result.stale_documents
        totals.seq = max(totals.seq, result.max_seq)
        m = self._metrics.ingest_chunks
        m.labels(coll.name, "removed").inc(result.removed)
        m.labels(coll.name, "kept").inc(result.kept)

    async def _embed_documents(
        self, coll: CollectionRecord, space: SpaceInfo, docs: list[DocumentRow], totals: JobTotals
    ) -> list[DocumentChunks]:
        assert space.model is not None
        embedder = await asyncio.to_thread(self._models.get, space.model)
        check_parity(embedder.spec, coll.name, space.space_id)
        spec = coll.config.chunking or chunking_for_model(embedder.spec.max_tokens)
        tok = embedder.tokenizer
        chunked = await asyncio.to_thread(
            lambda: [chunk_text(d.id, d.text, tok, spec) for d in docs]
        )
        hashes = [c.hash for chunks in chunked for c in chunks]
        known = await asyncio.to_thread(
            self._store.vectors_by_hash, coll.name, space.space_id, hashes
        )
        missing: dict[str, str] = {}
        for chunks in chunked:
            for c in chunks:
                if c.hash not in known:
                    missing.setdefault(c.hash, c.text)
        if missing:
            vecs = await self._embed(space.model, list(missing.values()))
            for h, v in zip(missing, vecs, strict=True):
                known[h] = np.ascontiguousarray(v, dtype=np.float32).tobytes()
        totals.chunks_embedded += len(missing)
        totals.chunks_reused += len(hashes) - len(missing)
        self._metrics.ingest_chunks.labels(coll.name, "embedded").inc(len(missing))
        self._metrics.ingest_chunks.labels(coll.name, "reused").inc(len(hashes) - len(missing))
        return [
            DocumentChunks(
                d.id,
                d.content_hash,
                [
                    ChunkRow(
                        c.ordinal, c.text, c.start, c.end, c.token_count, c.hash, known[c.hash]
                    )
                    for c in chunks
                ],
            )
            for d, chunks in zip(docs, chunked, strict=True)
        ]


def _vector_document(d: DocumentRow) -> DocumentChunks:
    """A bring-your-own-vector document is one chunk carrying its (already validated) vector."""
    if d.vector is None:
        return DocumentChunks(d.id, d.content_hash, [])
    row = ChunkRow(0, d.text, 0, len(d.text), 0, d.content_hash, d.vector)
    return DocumentChunks(d.id, d.content_hash, [row])
