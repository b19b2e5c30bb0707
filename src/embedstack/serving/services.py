"""The server's composition root: builds every component from Settings, owns their lifecycle."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from embedstack.config import Settings
from embedstack.errors import InvalidInput, Unavailable
from embedstack.inference.backend import ModelEntry, ModelRegistry
from embedstack.inference.batcher import Batcher, BatcherConfig, Lane
from embedstack.inference.hashing import HashingEmbedder
from embedstack.inference.slow import SlowEmbedder
from embedstack.ingest.pipeline import IngestWorker, WorkerConfig
from embedstack.ingest.queue import Queue, SqliteQueue
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexManager
from embedstack.registry.upgrade import UpgradeService
from embedstack.serving.search_gate import SearchGate
from embedstack.storage.store import CollectionRecord, Store

log = logging.getLogger(__name__)


def build_models(settings: Settings) -> ModelRegistry:
    from embedstack.inference.models import available_models

    models = ModelRegistry()
    # every bundled model x backend; "all-MiniLM-L6-v2" is served in its fp32 space by the
    # fastest backend that passed the accuracy gate on this machine (inference/models.py), or by
    # the one pinned in settings.model_backends
    for entry in available_models(pins=settings.model_backends):
        models.register(entry)
    if settings.enable_test_models:
        for seed, name in enumerate(("hashing-test", "hashing-test-b")):  # two spaces
            models.register(
                ModelEntry(
                    name,
                    "deterministic hashing embedder (tests only)",
                    partial(HashingEmbedder, name=name, seed=seed),
                )
            )
        models.register(
            ModelEntry(
                "slow-test",
                "hashing embedder that sleeps 25 ms per batch + 1 ms per text (tests only)",
                SlowEmbedder,
            )
        )
    return models


@dataclass
class Services:
    settings: Settings
    metrics: Metrics
    store: Store
    queue: Queue
    models: ModelRegistry
    indexes: IndexManager
    collections: CollectionService
    search_pool: ThreadPoolExecutor
    search_gate: SearchGate
    upgrades: UpgradeService
    batchers: dict[str, Batcher] = field(default_factory=dict)
    query_models: dict[str, str] = field(default_factory=dict)  # collection -> last query model
    workers: list[IngestWorker] = field(default_factory=list)
    ready: bool = False
    rebuilding: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    _batcher_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def build(cls, settings: Settings) -> Services:
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        metrics = Metrics()
        store = Store(data / "store.db")
        queue = SqliteQueue(data / "queue.db", max_attempts=settings.max_attempts)
        models = build_models(settings)
        indexes = IndexManager(store, data / "indexes", metrics, settings.compaction_ratio)
        collections = CollectionService(store, models, indexes, settings.default_model)
        pool = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="search")
        gate = SearchGate(pool, settings.search_threads, settings.max_search_inflight, metrics)
        services: Services
        upgrades = UpgradeService(
            store, queue, models, indexes, collections,
            lambda model, texts: services.embed_bulk(model, texts), metrics,
        )  # fmt: skip
        services = cls(
            settings, metrics, store, queue, models, indexes, collections, pool, gate, upgrades
        )
        return services

    async def batcher(self, model: str) -> Batcher:
        """The batcher of a model, loading the model on first use (off the event loop)."""
        found = self.batchers.get(model)
        if found is not None:
            return found
        async with self._batcher_lock:
            if model not in self.batchers:
                embedder = await asyncio.to_thread(self.models.get, model)
                s = self.settings
                config = BatcherConfig(
                    max_batch_size=s.max_batch_size,
                    max_batch_tokens=s.max_batch_tokens,
                    max_wait_ms=s.max_wait_ms,
                    max_pending=s.max_pending,
                    max_pending_bulk=s.max_pending_bulk,
                    bulk_every=s.bulk_every,
                    bulk_batch_ms=s.bulk_batch_ms,
                )
                b = Batcher(embedder, config, self.metrics)
                await b.start()
                self.batchers[model] = b
            return self.batchers[model]

    async def embed(
        self, model: str, texts: Sequence[str], lane: Lane = "query", deadline: float | None = None
    ) -> np.ndarray:
        """Vectors of `texts`; with a `deadline` (time.monotonic()), Overloaded instead of
        queueing when they would be embedded after it."""
        b = await self.batcher(model)
        return await b.embed(texts, lane, deadline)

    async def embed_counted(
        self, model: str, texts: Sequence[str], deadline: float | None = None
    ) -> tuple[np.ndarray, int]:
        """Vectors and the tokens the model read (texts are tokenized once, by the batcher)."""
        b = await self.batcher(model)
        return await b.embed_counted(texts, "query", deadline)

    def budget_seconds(self, requested_ms: float | None) -> float:
        """A request's latency budget: its own (bounded) or the server default."""
        s = self.settings
        if requested_ms is None:
            return s.query_budget_ms / 1000.0
        if not 0 < requested_ms <= s.max_query_budget_ms:
            raise InvalidInput(
                f"latency budget {requested_ms:g} ms is out of range: send more than 0 and at "
                f"most {s.max_query_budget_ms:g} ms"
            )
        return requested_ms / 1000.0

    async def embed_bulk(self, model: str, texts: Sequence[str]) -> np.ndarray:
        return await self.embed(model, texts, "bulk")

    def make_worker(self, name: str | None = None) -> IngestWorker:
        s = self.settings
        cfg = WorkerConfig(
            visibility_timeout=s.visibility_timeout_s, batch_documents=s.ingest_batch_documents
        )
        return IngestWorker(
            self.store, self.queue, self.models, self.embed_bulk, self.metrics, cfg,
            on_written=self.after_write, name=name,
        )  # fmt: skip

    async def after_write(self, collection: str) -> None:
        await asyncio.to_thread(self.indexes.sync_collection, collection)

    def start_rebuild(self, record: CollectionRecord) -> None:
        """Rebuild a collection's indexes in the background (one at a time per collection)."""
        previous = self.rebuilding.get(record.name)

        async def run() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                await asyncio.to_thread(self.collections.rebuild, record)
            except Exception:
                log.exception(
                    "index rebuild of %s failed; the old index keeps serving", record.name
                )
            finally:
                if self.rebuilding.get(record.name) is task:
                    del self.rebuilding[record.name]

        task = asyncio.create_task(run())
        self.rebuilding[record.name] = task

    def notify_workers(self) -> None:
        for w in self.workers:
            w.notify()

    def recover_pending(self) -> int:
        """Re-enqueue documents that were stored but never indexed (e.g. a crash before enqueue)."""
        jobs = 0
        for collection, ids in self.store.pending_documents().items():
            for start in range(0, len(ids), 1000):
                self.queue.enqueue(
                    {"collection": collection, "documents": ids[start : start + 1000]}
                )
                jobs += 1
        return jobs

    def require_ready(self) -> None:
        if not self.ready:
            raise Unavailable("the server is starting: retry in a few seconds (see GET /readyz)")

    async def close(self) -> None:
        for b in self.batchers.values():
            await b.stop()
        await asyncio.to_thread(self.indexes.snapshot_all)
        self.search_pool.shutdown(wait=True)
        self.queue.close()
        self.store.close()
