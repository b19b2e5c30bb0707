"""Observability and audit on a cluster API node: the single-node routes and response models,
fed from the API node's own registry and from what the API nodes share in the catalog's Redis
(cluster/observed.py).

- GET /metrics: the API node's registry (obs/metrics.py): request latency by route, method and
  status; the router's shard calls by outcome, retries and scatter times; query embedding by
  where it ran (service, local); and, gathered from the last status round of the shard
  replicas, documents, vectors and index bytes per replica and space, applied log position and
  lag (against the partition's end) per replica. Plus drift and feedback gauges of the spaces
  this node answered queries for.
- GET /v1/collections/{name}/stats: single node's StatsOut, counts summed over the caught-up
  replica of each shard; drift of this node's window against the shared baseline (top-1 score
  and norm: the corpus centroid is in the replicas); feedback over the cluster's remembered
  queries. Online recall is not sampled in cluster mode (`recall.enabled` is false).
- POST /v1/collections/{name}/drift/baseline: a new shared baseline, for every API node.
- POST /v1/feedback: on a query any API node answered (records written before the query's 200,
  marks before the feedback's 200).
- GET /v1/metrics/history and GET /dashboard: this node's ring sampler (obs/history.py), the
  single-node page.
- GET /v1/audit: the tenant's entries, newest first, from the shared capped streams; every write
  and admin request and every 403 on any API node is recorded before its answer goes out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.observed import (
    ClusterAudit,
    ClusterBaselines,
    ClusterFeedback,
    SharedDrift,
)
from embedstack.cluster.router import ClusterRouter, ReplicaState
from embedstack.config import Settings
from embedstack.errors import InvalidInput, NotFound, Unavailable
from embedstack.obs.history import History
from embedstack.registry.quality import DEFAULT_FLOOR
from embedstack.serving.audit import notes_of, record_action
from embedstack.serving.auth import OPEN_PATHS, Principal
from embedstack.serving.cluster_auth import ClusterAccess, scope_for
from embedstack.serving.http import JSON
from embedstack.serving.responses import AuditOut, BaselineOut, FeedbackOut, HistoryOut, StatsOut
from embedstack.serving.routes.dashboard import dashboard_page, history_body
from embedstack.serving.schemas import FeedbackIn
from embedstack.serving.services import quality_config

log = logging.getLogger(__name__)


class ClusterObs:
    """An API node's observability: its metrics registry (the router's), the ring sampler, and
    the feedback, drift baselines and audit log shared through the catalog's Redis."""

    def __init__(self, router: ClusterRouter, settings: Settings) -> None:
        self.router = router
        self.settings = settings
        self.metrics = router.metrics
        self.quality = quality_config(settings)
        client, prefix = router.catalog.client(), router.catalog.prefix
        self._redis = client
        self.feedback = ClusterFeedback(
            client, prefix, settings.feedback_max_queries, self.quality.recall_k
        )
        self.drift = SharedDrift(
            ClusterBaselines(client, prefix, settings.drift_baseline_queries),
            settings.drift_window_queries, self.quality.drift_min_window, settings.drift_psi_alert,
        )  # fmt: skip
        self.audit = ClusterAudit(client, prefix, settings.cluster_audit_max_entries)
        self.history = History(
            self.metrics.registry, settings.history_interval_s, settings.history_window_s
        )
        self._names: dict[tuple[str, str], str] = {}  # (topic, space) -> collection, answered
        self._export = threading.Lock()

    # -- the query path -------------------------------------------------------------------------
    async def timed_embed(
        self, model: str | None, via: str, call: Awaitable[np.ndarray]
    ) -> np.ndarray:
        """Await a query embedding, timed by model, where it ran and outcome."""
        began, outcome = time.perf_counter(), "error"
        try:
            vec = await call
            outcome = "ok"
            return vec
        finally:
            self.metrics.query_embed_seconds.labels(model or "", via, outcome).observe(
                time.perf_counter() - began
            )

    def observe(
        self, coll: ClusterCollection, space_id: str, vec: np.ndarray | None,
        hits: list[dict[str, Any]],
    ) -> str:  # fmt: skip
        """Remember an answered query (its record committed before this returns, so any API
        node takes feedback on it) and note its drift signals; its query_id. The query's answer
        never waits on the catalog's health: a record the catalog does not take (a failover) is
        counted and logged, and the query is answered (feedback on it then gets 404)."""
        import redis

        self._names[(coll.topic, space_id)] = coll.name
        query_id = uuid.uuid4().hex
        top1 = float(hits[0]["score"]) if hits else 0.0
        norm = float(np.linalg.norm(vec)) if vec is not None else 0.0
        drift = self.quality.drift and vec is not None and bool(hits)
        try:
            with self._redis.pipeline(transaction=False) as pipe:
                if self.quality.feedback:
                    documents = list(dict.fromkeys(str(h["document_id"]) for h in hits))
                    query_id = self.feedback.remember(
                        coll.name, coll.topic, space_id, documents, pipe
                    )
                baseline = drift and self.drift.record(coll.topic, space_id, top1, norm, pipe)
                answers = pipe.execute()
        except (redis.RedisError, Unavailable) as exc:
            self.metrics.query_records_failed.labels(coll.name).inc()
            log.warning("the catalog did not take the record of query %s: %s", query_id, exc)
            return query_id
        if baseline:
            self.drift.appended(coll.topic, space_id, int(answers[-1]), top1, norm)
        return query_id

    # -- gauges ---------------------------------------------------------------------------------
    def export(self) -> None:
        """Set the drift and feedback gauges of the spaces this node answered queries for."""
        m = self.metrics
        self.drift.check_generations()
        for (topic, space), name in list(self._names.items()):
            if self.quality.drift:
                report = self.drift.evaluate(topic, space)
                for signal, value in report.psi.items():
                    m.drift_psi.labels(name, space, signal).set(value)
                    m.drift_ks.labels(name, space, signal).set(report.ks[signal])
                m.drift_alert.labels(name, space).set(1 if report.alert else 0)
            if self.quality.feedback:
                stats = self.feedback.stats(topic, space)
                m.click_through.labels(name, space).set(stats.click_through)
                if stats.clicked_mrr is not None:
                    m.clicked_mrr.labels(name, space).set(stats.clicked_mrr)

    def export_replicas(self) -> None:
        """Set the gauges of the shard replicas: from their last status round, and the log's
        end offsets for their lag (asked of the broker: on a scrape only)."""
        m = self.metrics
        rows: list[tuple[str, str, ReplicaState, int | None]] = []
        for coll in self.router.catalog.list():
            try:
                ends: dict[int, int] | None = self.router.log.end_offsets(coll.topic, coll.shards)
            except Exception:
                log.warning("log end offsets of %s unavailable; no lag exported", coll.name)
                ends = None
            for shard, states in self.router.replica_states(coll).items():
                end = ends.get(shard) if ends is not None else None
                rows += [(coll.name, str(shard), r, end) for r in states]
        with self._export:
            gauges = (m.replica_documents, m.replica_vectors, m.replica_index_bytes,
                      m.replica_position, m.replica_lag)  # fmt: skip
            for gauge in gauges:
                gauge.clear()
            for name, shard_label, r, last in rows:
                labels = (name, shard_label, r.node)
                m.replica_documents.labels(*labels).set(int(r.stats.get("documents", 0)))
                for space, n in r.stats.get("vectors", {}).items():
                    m.replica_vectors.labels(*labels, space).set(int(n))
                for space, n in r.stats.get("index_bytes", {}).items():
                    m.replica_index_bytes.labels(*labels, space).set(int(n))
                m.replica_position.labels(*labels).set(r.position)
                if last is not None:
                    m.replica_lag.labels(*labels).set(max(0, last - r.position))

    def scrape(self) -> bytes:
        self.export()
        self.export_replicas()
        with self._export:
            return generate_latest(self.metrics.registry)

    @contextlib.asynccontextmanager
    async def running(self, _: Any) -> AsyncIterator[None]:
        """The app's lifespan part: every history interval, export the gauges and take a
        sample, until the app stops."""
        stop = asyncio.Event()

        async def loop() -> None:
            while not stop.is_set():
                try:
                    await asyncio.to_thread(self.export)
                    self.history.sample()
                except Exception:  # the dashboard's memory never takes the API node down
                    log.exception("metrics export or history sample failed; the next retries")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.history.interval_s)

        task = asyncio.create_task(loop())
        try:
            yield
        finally:
            stop.set()
            await task

    # -- stats ----------------------------------------------------------------------------------
    def stats(self, coll: ClusterCollection, caller: Principal) -> dict[str, Any]:
        """StatsOut of a cluster collection (see the module's docstring)."""
        best = [max(states, key=lambda r: r.position)
                for states in self.router.replica_states(coll).values() if states]  # fmt: skip
        spaces = [(coll.space_id, True)] + [
            (ref.space_id, False) for ref in (coll.shadow, coll.previous) if ref is not None
        ]
        floor = float(coll.config.index.params.get("recall_floor") or DEFAULT_FLOOR)
        out = []
        for space_id, active in spaces:
            vectors = sum(int(r.stats.get("vectors", {}).get(space_id, 0)) for r in best)
            size = sum(int(r.stats.get("index_bytes", {}).get(space_id, 0)) for r in best)
            drift = self.drift.evaluate(coll.topic, space_id) if self.quality.drift else None
            feedback = self.feedback.stats(coll.topic, space_id) if self.quality.feedback else None
            out.append({
                "space_id": space_id, "active": active, "vectors": vectors, "index_bytes": size,
                "index_type": coll.config.index.type,
                "drift": drift.as_dict() if drift is not None else None,
                "recall": {"k": self.quality.recall_k, "floor": floor, "estimate": None,
                           "under_floor": False, "knobs": {}, "retunes": [], "enabled": False},
                "feedback": feedback.as_dict() if feedback is not None else None,
            })  # fmt: skip
        return {"collection": caller.display(coll.name), "spaces": out}

    # -- routes ---------------------------------------------------------------------------------
    def routes(self, access_of: Callable[..., ClusterAccess]) -> APIRouter:
        api = APIRouter(lifespan=self.running)
        caller = Depends(access_of)
        settings = self.settings

        @api.get("/metrics", response_class=PlainTextResponse)
        async def metrics() -> Response:
            body = await asyncio.to_thread(self.scrape)
            return Response(body, media_type=CONTENT_TYPE_LATEST)

        @api.get("/v1/collections/{name}/stats", response_model=StatsOut)
        async def collection_stats(name: str, access: ClusterAccess = caller) -> Response:
            coll = await asyncio.to_thread(access.resolve, name)
            return JSON(await asyncio.to_thread(self.stats, coll, access.principal))

        @api.post("/v1/collections/{name}/drift/baseline", response_model=BaselineOut)
        async def reset_drift_baseline(name: str, access: ClusterAccess = caller) -> Response:
            """The next `drift_baseline_queries` queries of the serving space, on any API node,
            become its baseline."""
            coll = await asyncio.to_thread(access.resolve, name)
            await asyncio.to_thread(self.drift.reset, coll.topic, coll.space_id)
            return JSON({"collection": access.principal.display(coll.name),
                         "space_id": coll.space_id,
                         "baseline_queries": settings.drift_baseline_queries})  # fmt: skip

        @api.post("/v1/feedback", response_model=FeedbackOut)
        async def feedback(body: FeedbackIn, access: ClusterAccess = caller) -> Response:
            if not self.quality.feedback:
                raise InvalidInput(
                    "feedback is turned off on this server (EMBEDSTACK_QUALITY_FEEDBACK)"
                )
            if body.kind == "click" and body.grade is not None:
                raise InvalidInput("a click carries no 'grade': send kind 'grade' to grade a hit")
            owner = await asyncio.to_thread(self.feedback.owner, body.query_id)
            if owner is None or not access.principal.sees(owner):  # another tenant's: unknown
                raise NotFound(
                    f"query_id {body.query_id!r} is unknown or forgotten (the cluster remembers "
                    f"the last {settings.feedback_max_queries} queries of each collection "
                    "space): send the query_id of a recent query response"
                )
            # committed to the catalog's Redis before the answer
            (collection, space_id), rank = await asyncio.to_thread(
                self.feedback.record, body.query_id, body.document_id, body.kind, body.grade
            )
            self.metrics.feedback.labels(collection, space_id, body.kind).inc()
            access.note(collection=access.principal.display(collection))
            return JSON({"query_id": body.query_id, "document_id": body.document_id,
                         "rank": rank, "recorded": body.kind})  # fmt: skip

        api.add_api_route("/dashboard", dashboard_page, methods=["GET"], include_in_schema=False)

        @api.get("/v1/metrics/history", response_model=HistoryOut)
        async def metrics_history(
            since: float | None = Query(None, description="only samples after this unix time"),
        ) -> Response:
            return JSON(history_body(self.history, since))

        @api.get("/v1/audit", response_model=AuditOut)
        async def audit(
            limit: int = Query(100, ge=1, le=1000),
            before: int | None = Query(None, description="entries older than this id"),
            access: ClusterAccess = caller,
        ) -> Response:
            entries = await asyncio.to_thread(
                self.audit.audit, access.principal.tenant, limit, before
            )
            return JSON({"entries": [e.public() for e in entries]})

        return api

    def install(self, app: FastAPI) -> FastAPI:
        """Time every request and audit write and admin ones (outermost: after the gate, so
        its refusals count too)."""
        app.add_middleware(ObservedRequests, obs=self)
        return app


class ObservedRequests:
    """Pure ASGI middleware: request latency by route template, method and status, and the
    audit entry of each write or admin request (and each 403), written before the answer."""

    def __init__(self, app: ASGIApp, obs: ClusterObs) -> None:
        self.app = app
        self.obs = obs

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                await self._audit(scope, status[0])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            self.obs.metrics.http_latency.labels(path, scope["method"], str(status[0])).observe(
                time.perf_counter() - started
            )

    async def _audit(self, scope: Scope, status: int) -> None:
        principal = scope.get("state", {}).get("principal")
        if not isinstance(principal, Principal) or scope["path"] in OPEN_PATHS:
            return
        needed = scope_for(scope["method"], scope["path"])
        await record_action(self.obs.audit, scope, principal.key, principal.tenant, needed,
                            status, notes_of(scope))  # fmt: skip
