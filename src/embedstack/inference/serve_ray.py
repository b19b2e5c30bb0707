"""The embedder (a Batcher in front of one model) as a Ray Serve deployment with autoscaled
replicas, and `ServeBatcher`, what the API node holds in place of a local Batcher.

Each replica runs the same Batcher as a single node, with both lanes: a query goes ahead of
bulk work inside whichever replica takes it, and bulk batches are cut short while queries are
about. Across replicas, Serve's router sends each request to a replica with few ongoing
requests; the bulk lane of each replica is bounded (max_pending_bulk), so bulk work is refused
there (and retried by the ingest worker) rather than filling the room queries need.

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


def app_name(model: str) -> str:
    return f"embedstack-embed-{model}"


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
) -> Any:
    """Deploy the embedder of `model` as its own Serve application (on the connected Ray
    cluster; Serve starts without an HTTP proxy) unless it is already running; returns its
    handle. Blocks until a replica is up."""
    from ray import serve

    name = app_name(model)
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


def replica_states(model: str) -> dict[str, int]:
    """Replicas of the model's deployment by state (RUNNING, STARTING, STOPPING, ...)."""
    from ray import serve

    app = serve.status().applications.get(app_name(model))
    if app is None or DEPLOYMENT not in app.deployments:
        return {}
    return {str(k): int(v) for k, v in app.deployments[DEPLOYMENT].replica_states.items()}


class ServeBatcher(Batcher):
    """The Batcher-facing side of a Serve deployment: the server calls it as it calls a local
    Batcher; the queue and the model live in the replicas.

    `pending()` counts texts this caller sent and has not had answered; there is no local
    service-time estimate (estimate_wait is None, check_deadline admits): each replica's batcher
    refuses what it cannot embed within the deadline it is sent."""

    def __init__(self, handle: Any, spec: ModelSpec) -> None:
        # no Batcher.__init__: nothing here queues or runs a model
        self._handle = handle
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
        try:
            out = await self._send(list(texts), lane, deadline)
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

    async def _send(self, texts: list[str], lane: Lane, deadline: float | None) -> dict[str, Any]:
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
                result: dict[str, Any] = await self._handle.embed.remote(texts, lane, budget)
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
