"""The server's composition root: builds every component from Settings, owns their lifecycle."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np

from embedstack.config import Settings
from embedstack.errors import ConfigError, Unavailable
from embedstack.inference.autoscale import AutoscalePolicy
from embedstack.inference.backend import ModelEntry, ModelRegistry
from embedstack.inference.batching.batcher import Batcher, BatcherConfig, Lane
from embedstack.inference.engines.hashing import HashingEmbedder
from embedstack.inference.engines.remote import RemoteConfig
from embedstack.inference.engines.slow import SlowEmbedder
from embedstack.inference.serve_ray import ServeBatcher, deploy
from embedstack.ingest.brokers.url import open_queue
from embedstack.ingest.pipeline import IngestWorker, WorkerConfig
from embedstack.ingest.queue import Queue
from embedstack.obs.feedback import FeedbackLog
from embedstack.obs.metrics import Metrics
from embedstack.obs.system import SystemCollector, load_nvml
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexManager
from embedstack.registry.quality import QualityConfig, QualityObserver
from embedstack.registry.upgrade import UpgradeService
from embedstack.serving.limits import budget_seconds
from embedstack.serving.search_gate import SearchGate
from embedstack.storage.feedback import FEEDBACK, FeedbackStore
from embedstack.storage.store import CollectionRecord, Store
from embedstack.types import ModelSpec

log = logging.getLogger(__name__)


def remote_configs(
    settings: Settings, environ: Mapping[str, str] | None = None
) -> list[RemoteConfig]:
    """The remote models of `settings`, with their API keys read from `environ` (ConfigError
    naming the variable when one is unset); without `environ` the keys are left out."""
    out = []
    for m in settings.remote_models:
        key = None
        if m.api_key_env and environ is not None:
            key = environ.get(m.api_key_env)
            if not key:
                raise ConfigError(
                    f"remote model {m.name!r} reads its API key from the environment variable "
                    f"{m.api_key_env}, which is not set"
                )
        fields = m.model_dump(exclude={"api_key_env"})
        out.append(RemoteConfig(**fields, api_key=key))
    return out


def build_models(settings: Settings, environ: Mapping[str, str]) -> ModelRegistry:
    from embedstack.inference.models.catalog import available_models

    models = ModelRegistry()
    # every bundled model x backend; "all-MiniLM-L6-v2" is served in its fp32 space by the
    # fastest backend that passed the accuracy gate on this machine (inference/models/), or by
    # the one pinned in settings.model_backends; then the remote models
    remotes = remote_configs(settings, environ)
    entries = available_models(
        remotes=remotes, pins=settings.model_backends, gate_queries=settings.gate_queries
    )
    for entry in entries:
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


def autoscale_policy(settings: Settings, lane: Lane = "query") -> AutoscalePolicy:
    """The policy of a model's query (or bulk) application; only the bounds differ."""
    s = settings
    bounds = (s.inference_min_replicas, s.inference_max_replicas)
    if lane == "bulk":
        bounds = (s.inference_bulk_min_replicas, s.inference_bulk_max_replicas)
    return AutoscalePolicy(
        min_replicas=bounds[0], max_replicas=bounds[1],
        target_ongoing_requests=s.inference_target_ongoing,
        target_queued_texts=s.inference_target_queued_texts, gpu_target=s.inference_gpu_target,
        upscale_delay_s=s.inference_upscale_delay_s,
        downscale_delay_s=s.inference_downscale_delay_s, look_back_s=s.inference_look_back_s,
        metrics_interval_s=s.inference_metrics_interval_s,
        max_ongoing_requests=s.inference_max_ongoing, max_queued_requests=s.inference_max_queued,
        drain_s=s.inference_drain_s, replica_cpus=s.inference_replica_cpus,
        replica_gpus=s.inference_replica_gpus,
    )  # fmt: skip


def connect_ray(address: str, attempts: int = 3) -> None:
    """Connect this process to the Ray cluster at `address` once; a few tries, since Ray
    Client's proxy can fail to start a session under load; ConfigError naming the address."""
    import ray

    from embedstack.cli.cluster import _ray_init

    for attempt in range(attempts):
        if ray.is_initialized():
            return
        try:
            _ray_init(address)
        except (ConnectionError, TimeoutError) as exc:
            ray.shutdown()
            if attempt == attempts - 1:
                raise ConfigError(
                    f"cannot connect to the Ray cluster at {address} for inference ({exc}); "
                    "check --inference / EMBEDSTACK_INFERENCE and that Ray runs there"
                ) from exc
            log.warning("connecting to Ray at %s failed (%s); trying again", address, exc)
            time.sleep(1.0 + attempt)


def batcher_config(s: Settings) -> BatcherConfig:
    """A model's batcher settings (a local Batcher's, or each Serve replica's)."""
    return BatcherConfig(
        max_batch_size=s.max_batch_size,
        max_batch_tokens=s.max_batch_tokens,
        max_wait_ms=s.max_wait_ms,
        max_pending=s.max_pending,
        max_pending_bulk=s.max_pending_bulk,
        bulk_every=s.bulk_every,
        bulk_batch_ms=s.bulk_batch_ms,
    )


def worker_config(s: Settings) -> WorkerConfig:
    """An ingest worker's settings: documents embedded together, and texts per embed call (at
    most half of what the batcher's bulk lane admits at once, so no document is too big)."""
    return WorkerConfig(
        visibility_timeout=s.visibility_timeout_s,
        batch_documents=s.ingest_batch_documents,
        embed_batch=max(1, min(256, s.max_pending_bulk, s.max_pending) // 2),
    )


def serve_batcher(
    settings: Settings, model: str, spec: ModelSpec, config: BatcherConfig
) -> ServeBatcher:
    """A model's embedder as Ray Serve deployments on the Ray cluster at settings.inference
    (connecting once; deployed unless they already run there), behind a Batcher's interface:
    the query lane's application now, the bulk lane's on the first bulk request (none when
    inference_bulk_max_replicas is 0: bulk shares the query replicas)."""
    assert settings.inference is not None
    connect_ray(settings.inference)
    factory = partial(build_models, settings, {})  # what each replica loads its model with
    handle = deploy(factory, model, config, autoscale_policy(settings))
    deploy_bulk = None
    if settings.inference_bulk_max_replicas > 0:
        bulk = autoscale_policy(settings, "bulk")
        deploy_bulk = partial(deploy, factory, model, config, bulk, "bulk")
    return ServeBatcher(
        handle, spec, deploy_bulk=deploy_bulk, bulk_in_flight=settings.inference_bulk_in_flight
    )


def quality_config(settings: Settings) -> QualityConfig:
    s = settings
    return QualityConfig(
        drift=s.quality_drift, recall_fraction=s.recall_sample_fraction,
        recall_max_per_s=s.recall_max_per_s, recall_min_queries=s.recall_min_queries,
        recall_time_share=s.recall_time_share,
        retune=s.recall_retune, feedback=s.quality_feedback,
        feedback_max_queries=s.feedback_max_queries, drift_baseline=s.drift_baseline_queries,
        drift_window=s.drift_window_queries, drift_min_window=min(100, s.drift_window_queries),
        psi_alert=s.drift_psi_alert,
    )  # fmt: skip


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
    quality: QualityObserver
    batchers: dict[str, Batcher] = field(default_factory=dict)
    query_models: dict[str, str] = field(default_factory=dict)  # collection -> last query model
    workers: list[IngestWorker] = field(default_factory=list)
    ready: bool = False
    draining: bool = False  # SIGTERM received: new writes and queries get 503
    drain: Callable[[], Awaitable[None]] | None = None  # set by the app's lifespan
    rebuilding: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    # the server's background tasks by name ("maintenance", "worker serve-0", ...), watched by
    # problems(); maintenance_beat is when the maintenance loop last finished a pass
    tasks: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    maintenance_beat: float = field(default_factory=time.monotonic)
    _batcher_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    # collections with stored writes not yet applied to their indexes, and the task applying them
    _unapplied: set[str] = field(default_factory=set)
    _applier: asyncio.Task[None] | None = None

    @classmethod
    def build(cls, settings: Settings) -> Services:
        data = settings.data_dir
        data.mkdir(parents=True, exist_ok=True)
        metrics = Metrics()
        metrics.registry.register(SystemCollector(load_nvml()))
        store = Store(data / "store.db")
        queue = open_queue(settings.queue, data, settings.max_attempts)
        models = build_models(settings, os.environ)
        indexes = IndexManager(store, data / "indexes", metrics, settings.compaction_ratio)
        collections = CollectionService(store, models, indexes, settings.default_model)
        pool = ThreadPoolExecutor(settings.search_threads, thread_name_prefix="search")
        gate = SearchGate(pool, settings.search_threads, settings.max_search_inflight, metrics)
        services: Services
        upgrades = UpgradeService(
            store, queue, models, indexes, collections,
            lambda model, texts: services.embed_bulk(model, texts), metrics,
        )  # fmt: skip
        quality_cfg = quality_config(settings)
        feedback = FeedbackLog(
            quality_cfg.feedback_max_queries, quality_cfg.recall_k,
            FeedbackStore(data / FEEDBACK) if quality_cfg.feedback else None,
        )  # fmt: skip
        quality = QualityObserver(store, indexes, metrics, quality_cfg, feedback)
        services = cls(
            settings, metrics, store, queue, models, indexes, collections, pool, gate, upgrades,
            quality,
        )  # fmt: skip
        return services

    async def batcher(self, model: str) -> Batcher:
        """The batcher of a model, loading the model on first use (off the event loop)."""
        found = self.batchers.get(model)
        if found is not None and found.failure() is None:
            return found
        async with self._batcher_lock:
            dead = self.batchers.get(model)
            if dead is not None and dead.failure() is not None and self.ready:
                log.error("%s; starting a new one", dead.failure())
                del self.batchers[model]
            if model not in self.batchers:
                embedder = await asyncio.to_thread(self.models.get, model)
                s = self.settings
                config = batcher_config(s)
                if s.inference is None:
                    b = Batcher(embedder, config, self.metrics)
                else:  # the model's replicas in Ray Serve; this node keeps its tokenizer
                    b = await asyncio.to_thread(serve_batcher, s, model, embedder.spec, config)
                await b.start()
                self.batchers[model] = b
                self.export_engines()
            return self.batchers[model]

    def export_engines(self) -> None:
        """Set the engine and engine-choice series of every loaded model (an auto model swaps
        its engine when its background choice ends, so this runs again at every scrape)."""
        m = self.metrics
        m.model_engine.clear()
        m.model_selection.clear()
        for model, embedder in self.models.loaded().items():
            m.model_engine.labels(model, embedder.backend).set(1)
            selection = getattr(embedder, "selection", None)  # auto models only
            if selection is not None:
                m.model_selection.labels(model, selection).set(1)

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
        return budget_seconds(self.settings, requested_ms)

    async def embed_bulk(self, model: str, texts: Sequence[str]) -> np.ndarray:
        return await self.embed(model, texts, "bulk")

    def make_worker(self, name: str | None = None) -> IngestWorker:
        return IngestWorker(
            self.store, self.queue, self.models, self.embed_bulk, self.metrics,
            worker_config(self.settings),
            on_written=self.after_write, name=name,
        )  # fmt: skip

    async def after_write(self, collection: str) -> None:
        """A worker stored new chunks of `collection`: its indexes take them in on one applier
        task, off the worker's path, so the worker stores the next job while the index adds
        this one (a job reads "done" only once the indexes hold it: GET /v1/jobs checks), and
        writes stored meanwhile go into the index together, in one larger add."""
        self._unapplied.add(collection)
        if self._applier is None or self._applier.done():
            self._applier = asyncio.create_task(self._apply_writes())

    async def _apply_writes(self) -> None:
        while self._unapplied:
            name = self._unapplied.pop()
            try:
                await asyncio.to_thread(self.indexes.sync_collection, name)
            except Exception:  # the maintenance loop syncs every index again shortly
                log.exception("applying the stored writes of %s to its index failed", name)

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

    def delete_collection(self, name: str) -> None:
        """Delete a collection, its indexes and its metric series."""
        spaces = [s.space_id for s in self.store.spaces(name)]
        self.collections.delete(name)
        self.quality.forget(name)
        self.metrics.forget_collection(name, spaces)

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

    def maintenance_stall_s(self) -> float:
        """How long a maintenance pass may take before the loop counts as stuck."""
        return max(300.0, 50 * self.settings.sync_interval_s, 2 * self.settings.snapshot_interval_s)

    def problems(self) -> list[str]:
        """Why this node cannot do its work: a background task that died, a stuck maintenance
        loop, a dead batcher of the default model, a worker that cannot reach the queue."""
        out: list[str] = []
        for name, task in self.tasks.items():
            if task.done():
                exc = None if task.cancelled() else task.exception()
                out.append(f"{name} stopped" + (f": {exc!r}" if exc is not None else ""))
        stalled = time.monotonic() - self.maintenance_beat
        if "maintenance" in self.tasks and stalled > self.maintenance_stall_s():
            out.append(f"maintenance loop stuck: no pass finished for {stalled:.0f}s")
        default = self.batchers.get(self.settings.default_model)
        if default is not None and default.failure() is not None:
            out.append(str(default.failure()))
        out += [h for h in (w.health() for w in self.workers) if h is not None]
        return out

    def require_ready(self) -> None:
        if self.draining:
            raise Unavailable(
                "the server is shutting down: retry against another replica or after restart"
            )
        if not self.ready:
            raise Unavailable("the server is starting: retry in a few seconds (see GET /readyz)")

    async def close(self) -> None:
        if self._applier is not None:
            await asyncio.gather(self._applier, return_exceptions=True)
        await asyncio.to_thread(self.quality.stop)
        for b in self.batchers.values():
            await b.stop()
        await asyncio.to_thread(self.models.close)
        await asyncio.to_thread(self.indexes.snapshot_all)
        self.search_pool.shutdown(wait=True)
        self.queue.close()
        self.store.close()
