"""The ingest worker: lease a job, chunk, skip unchanged, embed, store chunks + vectors, ack.

At-least-once delivery made idempotent: a document whose stored version is already indexed is
skipped, chunks whose text hash already has a vector in the space reuse it (no model time),
and the store refuses to write chunks for a document version that is no longer current.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import numpy as np

from embedstack.errors import EmbedStackError, NotFound, Overloaded
from embedstack.inference.backend import ModelRegistry
from embedstack.inference.parity import check_parity
from embedstack.ingest.chunking import chunk_texts, chunking_for_model
from embedstack.ingest.queue import Job, Queue
from embedstack.obs.metrics import Metrics
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import (
    ChunkRow,
    CollectionRecord,
    DocumentChunks,
    DocumentRow,
    Store,
    vector_chunks,
)

log = logging.getLogger(__name__)
# documents per store transaction when the collection has no model (bring-your-own vectors)
VECTOR_BATCH = 5000

EmbedFn = Callable[[str, Sequence[str]], Awaitable[np.ndarray]]
WrittenFn = Callable[[str], Awaitable[None]]
_T = TypeVar("_T")


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
    # texts per embed call: at most what the batcher's bulk lane admits at once (the server
    # sets it from its batcher settings), so no document is ever too big for the server
    embed_batch: int = 256
    embed_concurrency: int = 4  # slices in flight at once, so the model never waits on us
    # an Overloaded model is waited out (its Retry-After, at least this, doubling up to the
    # max), never counted against the job: the overload is the server's, not the document's
    overload_wait_min: float = 0.05
    overload_wait_max: float = 5.0
    # queue errors (a locked database, ...) are retried with this backoff; a worker that has
    # failed to reach the queue for `unhealthy_after` seconds reports it (health(), /readyz)
    error_backoff_min: float = 0.1
    error_backoff_max: float = 5.0
    unhealthy_after: float = 30.0


class DocumentIndexer:
    """The indexing half of the worker, without a queue: chunk, skip unchanged, embed, store
    chunks + vectors, then `on_written`. A cluster shard replica drives it from its log."""

    def __init__(
        self,
        store: Store,
        models: ModelRegistry,
        embed: EmbedFn,
        metrics: Metrics,
        config: WorkerConfig,
        on_written: WrittenFn | None = None,
        name: str = "indexer",
    ) -> None:
        self.name = name
        self._store = store
        self._models = models
        self._embed = embed
        self._metrics = metrics
        self._config = config
        self._on_written = on_written

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
        stored = payload.get("stored")
        if isinstance(stored, dict):  # put_vectors wrote the chunks already: the index takes them
            totals.documents = len(ids)
            totals.chunks_removed = int(stored.get("removed", 0))
            totals.seq = int(stored.get("seq", 0))
            if self._on_written is not None:
                await self._on_written(name)
            return totals
        step = self._config.batch_documents
        if not any(s.model for s in spaces):  # vectors given: no model work to interleave
            step = max(step, VECTOR_BATCH)  # fewer, larger store transactions
        # the store write of one group runs behind the next group's fetch, chunking and model
        # work (a commit waits on fsync: the model would idle meanwhile); writes stay one at a
        # time and in order, and a job ends only when its last write has
        writing: asyncio.Future[None] | None = None
        recent: dict[tuple[str, str], bytes] = {}  # (space, text hash) -> vector being written
        try:
            for start in range(0, len(ids), step):
                docs = await asyncio.to_thread(
                    self._store.get_documents, name, ids[start : start + step]
                )
                totals.documents += len(docs)
                todo = docs if backfill else [d for d in docs if d.indexed_hash != d.content_hash]
                for n, space in enumerate(spaces):
                    if todo:
                        prepared, fresh = await self._chunks(coll, space, todo, totals, recent)
                        if writing is not None:
                            await writing
                        last = n == len(spaces) - 1 and backfill is None
                        writing = asyncio.ensure_future(
                            self._write(coll, space, prepared, totals, mark_indexed=last)
                        )
                        recent = {(space.space_id, h): v for h, v in fresh.items()}
            if writing is not None:
                await writing
        finally:
            if writing is not None and not writing.done():
                writing.cancel()  # its transaction still ends in its thread (writes are idempotent)
            elif writing is not None and not writing.cancelled():
                writing.exception()  # seen: the error that stopped the job is raised instead
        if self._on_written is not None:
            await self._on_written(name)
        return totals

    async def _write(
        self,
        coll: CollectionRecord,
        space: SpaceInfo,
        prepared: list[DocumentChunks],
        totals: JobTotals,
        mark_indexed: bool,
    ) -> None:
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
        if self._on_written is not None:  # the index takes them in while the model runs on
            await self._on_written(coll.name)

    async def _chunks(
        self,
        coll: CollectionRecord,
        space: SpaceInfo,
        docs: list[DocumentRow],
        totals: JobTotals,
        recent: dict[tuple[str, str], bytes],
    ) -> tuple[list[DocumentChunks], dict[str, bytes]]:
        """The documents' chunks with their vectors for `space`, and the vectors embedded now
        (text hash -> bytes); `recent` holds vectors not yet committed, reused like stored ones."""
        if not space.model:
            # a row without its vector was stored by put_vectors: its chunks are written already
            return [vector_chunks(d) for d in docs if d.vector is not None], {}
        embedder = await asyncio.to_thread(self._models.get, space.model)
        check_parity(embedder.spec, coll.name, space.space_id)
        spec = coll.config.chunking or chunking_for_model(embedder.spec.max_tokens)
        tok = embedder.tokenizer
        chunked = await asyncio.to_thread(
            lambda: chunk_texts([(d.id, d.text) for d in docs], tok, spec)
        )
        hashes = [c.hash for chunks in chunked for c in chunks]
        known = await asyncio.to_thread(
            self._store.vectors_by_hash, coll.name, space.space_id, hashes
        )
        missing: dict[str, str] = {}
        for chunks in chunked:
            for c in chunks:
                if c.hash not in known:
                    vector = recent.get((space.space_id, c.hash))
                    if vector is not None:
                        known[c.hash] = vector
                    else:
                        missing.setdefault(c.hash, c.text)
        fresh: dict[str, bytes] = {}
        if missing:
            texts = list(missing.values())
            step = max(1, self._config.embed_batch)
            gate = asyncio.Semaphore(max(1, self._config.embed_concurrency))
            model = space.model

            async def piece(start: int) -> np.ndarray:
                async with gate:
                    return await self._embed_waiting(model, texts[start : start + step])

            starts = range(0, len(texts), step)
            parts = await asyncio.gather(*(piece(start) for start in starts))
            for h, v in zip(missing, np.concatenate(parts), strict=True):
                known[h] = fresh[h] = np.ascontiguousarray(v, dtype=np.float32).tobytes()
        totals.chunks_embedded += len(missing)
        totals.chunks_reused += len(hashes) - len(missing)
        self._metrics.ingest_chunks.labels(coll.name, "embedded").inc(len(missing))
        self._metrics.ingest_chunks.labels(coll.name, "reused").inc(len(hashes) - len(missing))
        prepared = [
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
        return prepared, fresh

    async def _embed_waiting(self, model: str, texts: list[str]) -> np.ndarray:
        """Embed one admissible slice, waiting out Overloaded for as long as it lasts."""
        wait = self._config.overload_wait_min
        while True:
            try:
                return await self._embed(model, texts)
            except Overloaded as exc:
                self._metrics.ingest_overload_waits.inc()
                pause = min(max(exc.retry_after, wait), self._config.overload_wait_max)
                log.debug("model %s overloaded; %s waits %.2fs", model, self.name, pause)
                await asyncio.sleep(pause * random.uniform(0.8, 1.2))
                wait = min(wait * 2, self._config.overload_wait_max)


class IngestWorker(DocumentIndexer):
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
        name = name or f"worker-{uuid.uuid4().hex[:8]}"
        super().__init__(store, models, embed, metrics, config, on_written, name)
        self._queue = queue
        self._wake = asyncio.Event()
        self._failing_since: float | None = None
        self._last_error: str | None = None

    def notify(self) -> None:
        """New work was enqueued: stop idling."""
        self._wake.set()

    def health(self) -> str | None:
        """Why this worker is not making progress (the queue failing for a while), or None."""
        since = self._failing_since
        if since is None:
            return None
        failing = time.monotonic() - since
        if failing < self._config.unhealthy_after:
            return None
        return f"ingest worker {self.name} has failed to reach the queue for {failing:.0f}s: " + (
            self._last_error or "unknown error"
        )

    def _transient(self, what: str, exc: Exception) -> None:
        """A queue operation failed: log it, count it, remember it for health()."""
        self._metrics.ingest_worker_errors.labels(what).inc()
        self._last_error = f"{what}: {exc.message if isinstance(exc, EmbedStackError) else exc!r}"
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        log.warning("ingest worker %s: %s failed (%s); retrying", self.name, what, exc)

    async def run(self, stop: asyncio.Event) -> None:
        """Lease and handle jobs until `stop`; transient errors (a locked or briefly unusable
        queue, a bug in one job's handling) are logged and retried with backoff, never fatal."""
        idle = 0.02
        backoff = self._config.error_backoff_min
        while not stop.is_set():
            try:
                job = await asyncio.to_thread(
                    self._queue.lease, self.name, self._config.visibility_timeout
                )
            except Exception as exc:
                self._transient("lease", exc)
                await _sleep_unless(stop, backoff * random.uniform(0.8, 1.2))
                backoff = min(backoff * 2, self._config.error_backoff_max)
                continue
            backoff = self._config.error_backoff_min
            self._failing_since = None
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
            try:
                await self.handle(job)
            except Exception as exc:  # handle settles its own errors; this is the last guard
                log.exception("ingest worker %s: handling job %s failed", self.name, job.id)
                self._transient("handle", exc)
                await _sleep_unless(stop, self._config.error_backoff_min)

    async def handle(self, job: Job) -> None:
        """Process one leased job and ack or fail it. A lease lost meanwhile (the heartbeat
        could not extend it: another worker may hold the job now) stops the work at once, and
        the job is neither acked nor failed by us."""
        assert job.lease_id is not None
        lost = asyncio.Event()
        work = asyncio.ensure_future(self.process(job.payload))
        heartbeat = asyncio.ensure_future(self._heartbeat(job.id, job.lease_id, work, lost))
        try:
            try:
                totals = await work
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not lost.is_set() or (task is not None and task.cancelling()):
                    # shutting down: give the job back now, not after the visibility timeout
                    # (a lease another worker holds is refused by release, so this is safe)
                    work.cancel()
                    with contextlib.suppress(Exception):
                        self._queue.release(job.id, job.lease_id)
                    raise
                self._lease_lost(job)
                return
            except Exception as exc:  # any failure: retry with backoff, then dead-letter
                if lost.is_set():
                    self._lease_lost(job)
                    return
                message = exc.message if isinstance(exc, EmbedStackError) else repr(exc)
                if not isinstance(exc, EmbedStackError):
                    log.exception("ingest job %s failed", job.id)
                delay = min(2.0**job.attempts, 60.0)
                status = await self._settle(
                    "fail", self._queue.fail, job.id, job.lease_id, message, delay
                )
                if status == "stale":
                    self._lease_lost(job)
                elif status is not None:
                    outcome = "failed" if status == "dead" else "retried"
                    self._metrics.ingest_jobs.labels(outcome).inc()
                return
            acked = await self._settle(
                "ack", self._queue.ack, job.id, job.lease_id, totals.as_dict()
            )
            if acked:
                self._metrics.ingest_jobs.labels("done").inc()
            elif acked is not None:
                self._lease_lost(job)
        finally:
            heartbeat.cancel()

    def _lease_lost(self, job: Job) -> None:
        log.warning(
            "ingest worker %s lost its lease on job %s; left to the worker that holds it",
            self.name,
            job.id,
        )
        self._metrics.ingest_jobs.labels("lease_lost").inc()

    async def _settle(self, what: str, op: Callable[..., _T], *args: Any) -> _T | None:
        """Run ack/fail, retrying transient queue errors for up to one visibility timeout;
        None if it never went through (the lease then expires and the job is redelivered:
        at-least-once, and processing is idempotent)."""
        deadline = time.monotonic() + self._config.visibility_timeout
        backoff = self._config.error_backoff_min
        while True:
            try:
                result = await asyncio.to_thread(op, *args)
            except Exception as exc:
                self._transient(what, exc)
                if time.monotonic() + backoff > deadline:
                    return None
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._config.error_backoff_max)
                continue
            self._failing_since = None
            return result

    async def _heartbeat(
        self, job_id: str, lease_id: str, work: asyncio.Future[Any], lost: asyncio.Event
    ) -> None:
        """Extend the lease every third of its timeout. A refused extend (the lease is no longer
        ours), or failures until the lease has run out, cancel `work` and set `lost`."""
        timeout = self._config.visibility_timeout
        period = timeout / 3
        expires = time.monotonic() + timeout
        while True:
            await asyncio.sleep(period)
            try:
                ours = await asyncio.to_thread(self._queue.extend, job_id, lease_id, timeout)
            except Exception as exc:
                self._transient("extend", exc)
                ours = time.monotonic() < expires - period / 2  # retry while it still holds
                if ours:
                    continue
            if not ours:
                lost.set()
                work.cancel()
                return
            expires = time.monotonic() + timeout


async def _sleep_unless(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
