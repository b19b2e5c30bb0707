"""The embedder (a Batcher in front of one model) as a Ray Serve deployment with autoscaled
replicas, and `ServeBatcher`, what the API node holds in place of a local Batcher.

Each replica runs the same Batcher as a single node, with both lanes: a query goes ahead of
bulk work inside whichever replica takes it, and bulk batches are cut short while queries are
about. That is not enough across replicas: Serve's router (one per caller's handle) sends a
request to a replica only while the replica has a free ongoing-request slot, and otherwise
queues it at the caller, first in first out, so with every slot taken by bulk requests a query
would wait behind all the bulk requests queued before it, at its own handle and, for the slots,
against every other caller's. So each model has two Serve applications, one per lane
(`app_name(model, lane)`), each with its own replicas and autoscaling: the query lane never
shares a slot or a handle queue with bulk work, and its replicas scale on query load alone.
ServeBatcher sends each lane to its own application and bounds the bulk requests it has in
flight (`bulk_in_flight`: the rest wait in the caller, so one busy ingest node cannot fill the
bulk application's queues). Without a bulk application (inference_bulk_max_replicas = 0) both
lanes share the query application, as inside one replica.

Errors cross the handle as values, not exceptions: a replica's Overloaded (its queue is full,
or a deadline cannot be met) comes back as Overloaded with the replica's Retry-After, so the
API answers 429 as it does on one node. When every replica's slots and the caller's handle
queue are full, Serve refuses at once (BackPressureError), which is Overloaded too.

A replica that dies with requests in flight (a crash, a lost node, ray.kill): Serve's router
sends again what it can tell never ran; what comes back as an actor error, ServeBatcher sends
again (a few times, with backoff) and Serve routes it to a live replica (embedding is
idempotent). Scale-down drains: a stopping replica takes no new requests and finishes its
own (graceful_shutdown_* in AutoscalePolicy).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from embedstack.errors import EmbedStackError, InvalidInput, Overloaded, Unavailable
from embedstack.inference.autoscale import GPU_UTILIZATION, QUEUED_TEXTS, AutoscalePolicy
from embedstack.inference.backend import ModelRegistry
from embedstack.inference.batching.batcher import Batcher, BatcherConfig
from embedstack.inference.batching.plan import LANES, Lane
from embedstack.obs.system import load_nvml
from embedstack.types import ModelSpec

log = logging.getLogger(__name__)

DEPLOYMENT = "Embedder"
_ERRORS: dict[str, type[EmbedStackError]] = {
    "Overloaded": Overloaded,
    "InvalidInput": InvalidInput,
    "PayloadTooLarge": InvalidInput,
}
_RETRIES = 5  # sends of one request after its replica died (Serve replaces dead replicas)
_BACKOFF_S = 0.2  # doubled after each, up to _MAX_BACKOFF_S: about 5 s in all
_MAX_BACKOFF_S = 2.0


def app_name(model: str, lane: Lane = "query") -> str:
    """The Serve application of a model's lane (no name is a prefix of another)."""
    return f"embedstack-embed-{model}" if lane == "query" else f"embedstack-{lane}-{model}"


class EmbedderReplica:
    """One Serve replica: a model loaded from `models_factory()` and its Batcher."""

    def __init__(
        self, models_factory: Callable[[], ModelRegistry], model: str, config: BatcherConfig
    ) -> None:
        self._models = models_factory()
        self._embedder = self._models.get(model)
        self._config = config
        self._batcher: Batcher | None = None
        self._embedded = 0  # texts this replica embedded
        self._nvml = load_nvml()
        self._gpus: list[int] = []
        if self._nvml is not None:
            import ray

            self._gpus = [int(g) for g in ray.get_gpu_ids()]

    async def _started(self) -> Batcher:
        if self._batcher is None or self._batcher.failure() is not None:
            batcher = Batcher(self._embedder, self._config)
            await batcher.start()
            self._batcher = batcher
        return self._batcher

    async def embed(self, texts: list[str], lane: Lane, budget_s: float | None) -> dict[str, Any]:
        """{"vectors", "tokens"}, or {"error", "message", "retry_after"} for our errors.
        `budget_s`: seconds left of the caller's deadline when it sent the request."""
        try:
            batcher = await self._started()
            deadline = None if budget_s is None else time.monotonic() + budget_s
            vectors, tokens = await batcher.embed_counted(texts, lane, deadline)
            self._embedded += len(texts)
            return {"vectors": vectors, "tokens": tokens}
        except EmbedStackError as exc:
            return {
                "error": type(exc).__name__,
                "message": exc.message,
                "retry_after": getattr(exc, "retry_after", None),
            }

    def embedded(self) -> int:
        """Texts this replica embedded since it started."""
        return self._embedded

    def pending(self) -> dict[str, int]:
        """Admitted-but-unfinished texts per lane in this replica."""
        if self._batcher is None:
            return dict.fromkeys(LANES, 0)
        return self._batcher.pending()

    def record_autoscaling_stats(self) -> dict[str, float]:
        """Custom metrics for QueuePolicy: queued texts, and GPU utilization where one is."""
        out = {QUEUED_TEXTS: float(sum(self.pending().values()))}
        if self._nvml is not None and self._gpus:
            try:
                rates = [
                    self._nvml.nvmlDeviceGetUtilizationRates(
                        self._nvml.nvmlDeviceGetHandleByIndex(i)
                    ).gpu
                    for i in self._gpus
                ]
                out[GPU_UTILIZATION] = sum(rates) / len(rates) / 100.0
            except Exception:
                log.warning("reading GPU utilization through NVML failed", exc_info=True)
        return out

    async def __del__(self) -> None:
        if self._batcher is not None:
            await self._batcher.stop()


def deploy(
    models_factory: Callable[[], ModelRegistry],
    model: str,
    config: BatcherConfig,
    policy: AutoscalePolicy,
    lane: Lane = "query",
) -> Any:
    """Deploy the embedder of `model` for `lane` as its own Serve application (on the connected
    Ray cluster; Serve starts without an HTTP proxy) unless it is already running; returns its
    handle. Blocks until a replica is up."""
    from ray import serve

    name = app_name(model, lane)
    status = serve.status().applications.get(name)
    if status is not None and status.status == "RUNNING":
        return serve.get_app_handle(name)
    serve.start(proxy_location="Disabled")
    with warnings.catch_warnings():  # metrics_interval_s is deprecated for environment variables
        warnings.simplefilter("ignore", DeprecationWarning)
        options = policy.deployment_options()
        deployment: Any = serve.deployment(EmbedderReplica, name=DEPLOYMENT, **options)
    app = deployment.bind(models_factory, model, config)
    return serve.run(app, name=name, route_prefix=None)


def replica_states(model: str, lane: Lane = "query") -> dict[str, int]:
    """Replicas of the model's deployment for `lane` by state (RUNNING, STARTING, ...)."""
    from ray import serve

    app = serve.status().applications.get(app_name(model, lane))
    if app is None or DEPLOYMENT not in app.deployments:
        return {}
    return {str(k): int(v) for k, v in app.deployments[DEPLOYMENT].replica_states.items()}


class Slots:
    """At most `n` holders at once, for callers on any threads and event loops (the shard
    node's log replicas embed from threads of their own); waiters are let in first come,
    first served."""

    def __init__(self, n: int) -> None:
        if n < 1:
            raise ValueError("Slots needs at least 1 slot")
        self.n = n
        self.held = 0
        self.most = 0  # the most held at once so far
        self._lock = threading.Lock()
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        with self._lock:
            if self.held < self.n and not self._waiters:
                self._take()
                return
            future: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, future))
        try:
            await future  # release() hands its slot over: held already counts this caller
        except asyncio.CancelledError:
            with self._lock:
                if (loop, future) in self._waiters:
                    self._waiters.remove((loop, future))
                    raise
            self.release()  # cancelled after the hand-over: pass the slot on
            raise

    def release(self) -> None:
        with self._lock:
            while self._waiters:
                loop, future = self._waiters.pop(0)
                if not loop.is_closed():
                    loop.call_soon_threadsafe(_hand_over, future)
                    return
            self.held -= 1

    def _take(self) -> None:
        self.held += 1
        self.most = max(self.most, self.held)


def _hand_over(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ServeBatcher(Batcher):
    """The Batcher-facing side of a model's Serve deployments: the server calls it as it calls
    a local Batcher; the queues and the model live in the replicas.

    Queries go to `handle` (the query lane's application). Bulk work goes to the bulk lane's
    application: `bulk_handle`, or the one `deploy_bulk()` returns (called once, off the event
    loop, on the first bulk request: an API node that only queries never starts bulk
    replicas); with neither, to `handle` too. At most `bulk_in_flight` bulk requests of this
    caller are sent at once (0: no bound); the others wait here, counted in `pending()`.

    `pending()` counts texts this caller sent and has not had answered; there is no local
    service-time estimate (estimate_wait is None, check_deadline admits): each replica's batcher
    refuses what it cannot embed within the deadline it is sent."""

    def __init__(
        self,
        handle: Any,
        spec: ModelSpec,
        bulk_handle: Any = None,
        deploy_bulk: Callable[[], Any] | None = None,
        bulk_in_flight: int = 0,
    ) -> None:
        # no Batcher.__init__: nothing here queues or runs a model
        self._handles: dict[Lane, Any] = {"query": handle, "bulk": bulk_handle}
        self._deploy_bulk = deploy_bulk
        self._deploy_lock = threading.Lock()
        self.bulk_slots = Slots(bulk_in_flight) if bulk_in_flight > 0 else None
        self._model = spec.name
        self._dim = spec.dim
        self._pending: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._sent: dict[int, tuple[Lane, float]] = {}  # id -> lane, time.monotonic() sent
        self._stopped = False
        self.resent = 0  # requests sent again after their replica died

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        """Stop sending (the deployment outlives this caller: other API nodes use it)."""
        self._stopped = True

    def failure(self) -> str | None:
        if self._stopped:
            return f"the inference handle of model {self._model!r} is stopped"
        return None

    def pending(self) -> dict[str, int]:
        return {lane: self._pending[lane] for lane in LANES}

    def oldest_waits(self) -> dict[str, float]:
        now = time.monotonic()
        out: dict[str, float] = dict.fromkeys(LANES, 0.0)
        for lane, sent in self._sent.values():
            out[lane] = max(out[lane], now - sent)
        return out

    def estimate_wait(self, tokens: Sequence[int], lane: Lane = "query") -> float | None:
        return None

    def check_deadline(self, tokens: Sequence[int], deadline: float, lane: Lane = "query") -> None:
        return None

    async def embed_counted(
        self, texts: Sequence[str], lane: Lane = "query", deadline: float | None = None
    ) -> tuple[np.ndarray, int]:
        if lane not in LANES:
            raise InvalidInput(f"unknown lane {lane!r}; use one of {', '.join(LANES)}")
        n = len(texts)
        if n == 0:
            return np.zeros((0, self._dim), dtype=np.float32), 0
        if self._stopped:
            raise Unavailable(f"model {self._model!r} is shutting down; retry the request")
        key = id(texts)
        self._pending[lane] += n
        self._sent[key] = (lane, time.monotonic())
        slots = self.bulk_slots if lane == "bulk" else None
        try:
            handle = await self._handle(lane)
            if slots is not None:
                await slots.acquire()
            try:
                out = await self._send(handle, list(texts), lane, deadline)
            finally:
                if slots is not None:
                    slots.release()
        finally:
            self._pending[lane] -= n
            self._sent.pop(key, None)
        if "error" in out:
            kind = _ERRORS.get(str(out["error"]), Unavailable)
            if kind is Overloaded:
                raise Overloaded(str(out["message"]), retry_after=float(out["retry_after"] or 1))
            raise kind(str(out["message"]))
        vectors = np.asarray(out["vectors"], dtype=np.float32)
        if vectors.shape != (n, self._dim):
            raise Unavailable(
                f"model {self._model!r} replica returned shape {vectors.shape} for {n} texts"
            )
        return vectors, int(out["tokens"])

    async def _handle(self, lane: Lane) -> Any:
        """The handle of the lane's application (deploying the bulk one on first use)."""
        if lane == "query":
            return self._handles["query"]
        if self._handles["bulk"] is None and self._deploy_bulk is not None:
            await asyncio.to_thread(self._deploy_bulk_once)
        return self._handles["bulk"] or self._handles["query"]

    def _deploy_bulk_once(self) -> None:
        with self._deploy_lock:
            if self._handles["bulk"] is None and self._deploy_bulk is not None:
                self._handles["bulk"] = self._deploy_bulk()

    async def _send(
        self, handle: Any, texts: list[str], lane: Lane, deadline: float | None
    ) -> dict[str, Any]:
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError

        for attempt in range(_RETRIES + 1):
            budget = None
            if deadline is not None:
                budget = deadline - time.monotonic()
                if budget <= 0:
                    raise Overloaded(
                        f"the request's latency budget ran out before model {self._model!r} "
                        "could embed it; retry or send a larger budget",
                        retry_after=1.0,
                    )
            try:
                result: dict[str, Any] = await handle.embed.remote(texts, lane, budget)
                return result
            except BackPressureError as exc:
                raise Overloaded(
                    f"every replica of model {self._model!r} is busy and the queue in front of "
                    "them is full; retry after 1.0s or lower client concurrency",
                    retry_after=1.0,
                ) from exc
            except (RayActorError, ActorUnavailableError) as exc:
                if attempt == _RETRIES:
                    raise Unavailable(
                        f"the replicas of model {self._model!r} kept failing "
                        f"({type(exc).__name__}); retry later"
                    ) from exc
                self.resent += 1
                log.warning("a replica of %r failed mid-request; sending again", self._model)
                await asyncio.sleep(min(_BACKOFF_S * 2**attempt, _MAX_BACKOFF_S))
        raise AssertionError("unreachable")
