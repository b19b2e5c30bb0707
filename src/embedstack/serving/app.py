"""create_app: the FastAPI app, lifespan, metrics middleware and the one error -> status table."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedstack.errors import (
    ConfigError,
    Conflict,
    EmbedStackError,
    Forbidden,
    InsufficientStorage,
    InvalidInput,
    NotFound,
    NotSupported,
    Overloaded,
    PayloadTooLarge,
    SpaceMismatch,
    Unauthorized,
    Unavailable,
)
from embedstack.obs.history import History
from embedstack.serving.auth import AccessGate, scrub
from embedstack.serving.http import JSON, ClientGone
from embedstack.serving.limits import RateLimiter
from embedstack.serving.responses import ErrorOut
from embedstack.serving.routes import (
    admin,
    aliases,
    collections,
    dashboard,
    documents,
    embeddings,
    feedback,
    keys,
    query,
    records,
    stats,
    upgrades,
)
from embedstack.serving.services import Services
from embedstack.serving.shed import QueryShedder

log = logging.getLogger(__name__)

# The only table from error kind to HTTP status. Subclasses before their bases.
ERROR_STATUS: tuple[tuple[type[EmbedStackError], int], ...] = (
    (PayloadTooLarge, 413),
    (Unauthorized, 401),
    (Forbidden, 403),
    (InvalidInput, 422),
    (NotFound, 404),
    (SpaceMismatch, 409),
    (Conflict, 409),
    (Overloaded, 429),
    (InsufficientStorage, 507),
    (Unavailable, 503),
    (NotSupported, 501),
    # settings are checked at startup (the server does not start); one met later is this
    # server's setup, not the client's request and not a bug: unavailable here
    (ConfigError, 503),
)
CLIENT_CLOSED = 499
# every route module of a single-node server (a cluster API node answers each of their routes)
ROUTE_MODULES = (admin, embeddings, collections, documents, records, query, upgrades, aliases,
                 keys, stats, feedback, dashboard)  # fmt: skip
QUEUE_GAUGE_INTERVAL_S = 5.0  # job counts scan the jobs table: not on every 0.2 s pass
PURGE_INTERVAL_S = 60.0
SNAPSHOT_SHARE = 0.05  # of the time the maintenance loop may spend snapshotting indexes


def status_of(exc: EmbedStackError) -> int:
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


async def _domain_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmbedStackError)
    status = status_of(exc)
    headers = (
        {"Retry-After": str(max(1, round(exc.retry_after)))}
        if isinstance(exc, Overloaded)
        else {"WWW-Authenticate": "Bearer"}
        if isinstance(exc, Unauthorized)
        else None
    )
    message = scrub(request, exc.message)  # a tenant sees its own names plain
    return JSON(error_body(type(exc).__name__, message), status_code=status, headers=headers)


def _describe_validation(exc: RequestValidationError) -> str:
    parts = []
    for err in exc.errors()[:10]:
        loc = ".".join(str(p) for p in err.get("loc", ()) if p != "body") or "body"
        if err.get("type") == "json_invalid":
            return "the request body is not valid JSON: " + str(err.get("ctx", {}).get("error", ""))
        parts.append(f"{loc}: {err.get('msg')}")
    return "invalid request: " + "; ".join(parts)


async def _validation_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return JSON(error_body("InvalidInput", _describe_validation(exc)), status_code=422)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if isinstance(exc.__cause__, EmbedStackError):  # raised while FastAPI read the body
        return await _domain_error(request, exc.__cause__)
    message = str(exc.detail)
    if exc.status_code == 400:  # FastAPI could not read the body at all (e.g. not UTF-8)
        return JSON(
            error_body("InvalidInput", f"the request body cannot be read as JSON: {message}"),
            status_code=422,
        )
    if exc.status_code == 404:
        message = "no such route: see GET /docs for the API"
    elif exc.status_code == 405:
        message = "method not allowed on this route: see GET /docs for the API"
    return JSON(error_body("HTTPError", message), status_code=exc.status_code)


async def _client_gone(_: Request, exc: Exception) -> Response:
    return JSON(error_body("ClientGone", "client disconnected"), status_code=CLIENT_CLOSED)


async def _unexpected(_: Request, exc: Exception) -> Response:
    log.exception("unhandled error (a bug): %r", exc)
    return JSON(error_body("InternalError", "internal error; see the server log"), status_code=500)


async def refuse_declared_size(limit: int, scope: Scope, receive: Receive, send: Send) -> bool:
    """Answer 413 (True) when the request declares a body over `limit` bytes."""
    length = dict(scope.get("headers", [])).get(b"content-length")
    if length is None or not length.isdigit() or int(length) <= limit:
        return False
    body = error_body(
        "PayloadTooLarge",
        f"request body is {int(length)} bytes, over the {limit}-byte limit: "
        "split it into several requests",
    )
    await JSON(body, status_code=413)(scope, receive, send)
    return True


def capped(receive: Receive, limit: int) -> Receive:
    """`receive` that raises PayloadTooLarge once the body read passes `limit` bytes (a body
    sent without a length, or with a false one)."""
    received = [0]

    async def limited_receive() -> Message:
        message = await receive()
        if message["type"] == "http.request":
            received[0] += len(message.get("body", b""))
            if received[0] > limit:
                raise PayloadTooLarge(
                    f"request body is over the {limit}-byte limit: split it into several requests"
                )
        return message

    return limited_receive


class BodyLimit:
    """Pure ASGI middleware: the request body cap of MetricsAndLimits alone (cluster API nodes,
    which have no single-node Services)."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if await refuse_declared_size(self.limit, scope, receive, send):
            return
        await self.app(scope, capped(receive, self.limit), send)


class MetricsAndLimits:
    """Pure ASGI middleware: latency histogram per route template, and a request body cap."""

    def __init__(self, app: ASGIApp, services: Services) -> None:
        self.app = app
        self.services = services

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.services.settings.max_body_bytes
        if await refuse_declared_size(limit, scope, receive, send):
            return
        started = time.perf_counter()
        # latency budgets count from here (routes read request.state.arrived)
        scope.setdefault("state", {})["arrived"] = time.monotonic()
        status = [500]
        limited_receive = capped(receive, limit)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, limited_receive, send_wrapper)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.services.metrics.http_latency.labels(
                path, scope["method"], str(status[0])
            ).observe(time.perf_counter() - started)


async def _maintenance(services: Services, stop: asyncio.Event) -> None:
    """Keep indexes current with writes from other processes; snapshot them; export gauges.

    Every step (and every index within a step) fails on its own: the failure is logged and
    counted (embedstack_maintenance_errors_total) and the rest of the pass, and every later
    pass, still runs."""
    s = services.settings
    last_snapshot = last_queue = last_purge = time.monotonic()
    snapshot_wait = s.snapshot_interval_s
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=s.sync_interval_s)
        await _step(services, "sync", asyncio.to_thread(_each_index, services, "sync"))
        await _step(services, "upgrades", services.upgrades.refresh())
        if time.monotonic() - last_queue >= QUEUE_GAUGE_INTERVAL_S:  # counts scan the jobs
            await _step(services, "queue", _export_queue_depth(services))
            last_queue = time.monotonic()
        if time.monotonic() - last_purge >= PURGE_INTERVAL_S:
            purge = asyncio.to_thread(services.queue.purge, s.job_retention_s)
            await _step(services, "purge", purge)
            last_purge = time.monotonic()
        if time.monotonic() - last_snapshot >= snapshot_wait:
            began = time.monotonic()
            await _step(services, "snapshot", asyncio.to_thread(_each_index, services, "snapshot"))
            last_snapshot = time.monotonic()
            snapshot_wait = snapshot_pause(s.snapshot_interval_s, last_snapshot - began)
        services.maintenance_beat = time.monotonic()


def snapshot_pause(interval_s: float, took_s: float) -> float:
    """Seconds until the next snapshot pass: the interval, or longer after a pass that took
    long (a big index's snapshot writes, fsyncs and checksums all of it, and holds back index
    writes meanwhile), so snapshots take at most SNAPSHOT_SHARE of the time. Only restarts
    gain from them: the store holds every change, replayed after the last snapshot."""
    return max(interval_s, took_s / SNAPSHOT_SHARE)


async def _sample_history(history: History, stop: asyncio.Event) -> None:
    """One sample of the metrics every history interval until stop (GET /v1/metrics/history)."""
    while not stop.is_set():
        try:
            history.sample()
        except Exception:  # the dashboard's memory never takes the server down
            log.exception("metrics history sample failed; the next interval retries")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=history.interval_s)


async def _step(services: Services, name: str, work: Awaitable[object]) -> None:
    try:
        await work
    except Exception:
        log.exception("maintenance step %s failed; the next pass retries it", name)
        services.metrics.maintenance_errors.labels(name).inc()


def _each_index(services: Services, what: str) -> None:
    for key in services.indexes.open_keys():
        try:
            if what == "sync":
                services.indexes.sync(*key)
            elif services.indexes.snapshot(*key):
                # the snapshot holds every change up to its seq: the log before it can go
                seq = services.indexes.get(*key).snapshot_seq
                services.store.truncate_changes(*key, seq)
        except Exception:
            log.exception("maintenance %s of index %s/%s failed", what, *key)
            services.metrics.maintenance_errors.labels(what).inc()


async def _export_queue_depth(services: Services) -> None:
    m, q = services.metrics, services.queue
    counts = await asyncio.to_thread(q.counts)
    for status, n in counts.items():
        m.queue_depth.labels(status).set(n)
    name = type(q).__name__
    m.dead_letters.labels(name).set(counts.get("dead", 0))
    ages = getattr(q, "oldest_ages", None)  # brokers without it export no age series
    if ages is not None:
        for status, age in (await asyncio.to_thread(ages)).items():
            m.queue_oldest.labels(name, status).set(age)
    for model, batcher in services.batchers.items():
        for lane, age in batcher.oldest_waits().items():
            m.batcher_oldest.labels(model, lane).set(age)


def install_error_handlers(app: FastAPI) -> dict[int | str, dict[str, Any]]:
    """Map every error through ERROR_STATUS; returns the documented error responses."""
    app.add_exception_handler(EmbedStackError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
    return {
        status: {"model": ErrorOut, "description": kind.__doc__ or kind.__name__}
        for kind, status in ERROR_STATUS
    }


def create_app(services: Services) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        failed = await asyncio.to_thread(services.collections.open_all)
        if failed:
            log.error("collections that did not open (the rest serve): %s", failed)
        await services.batcher(services.settings.default_model)
        recovered = await asyncio.to_thread(services.recover_pending)
        if recovered:
            log.info("re-enqueued %d recovery jobs for documents not yet indexed", recovered)
        services.quality.start()
        tasks = [asyncio.create_task(_maintenance(services, stop))]
        services.tasks["maintenance"] = tasks[0]
        tasks.append(asyncio.create_task(_sample_history(app.state.history, stop)))
        for i in range(services.settings.workers):
            worker = services.make_worker(f"serve-{i}")
            services.workers.append(worker)
            tasks.append(asyncio.create_task(worker.run(stop)))
            services.tasks[f"ingest worker {worker.name}"] = tasks[-1]
        drained = asyncio.Event()

        async def drain() -> None:
            """Stop admitting (503), let in-flight jobs finish for up to shutdown_timeout_s
            (then cancel them: their leases are released), then write snapshots."""
            if services.draining:
                await drained.wait()
                return
            services.draining = True
            services.ready = False
            stop.set()
            _, pending = await asyncio.wait(tasks, timeout=services.settings.shutdown_timeout_s)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if pending:
                log.warning("shutdown: %d task(s) cancelled after the timeout", len(pending))
            try:
                await asyncio.to_thread(services.indexes.sync_all)
                await asyncio.to_thread(services.indexes.snapshot_all)
            except Exception:
                log.exception("shutdown snapshot failed; the next start replays the change log")
            drained.set()

        services.drain = drain
        # what startup made (open indexes and their maps, models, caches) lives as long as the
        # server: out of the collector's generations, no full collection walks it again (a
        # pause every query that lands in it would wait for)
        gc.collect()
        gc.freeze()
        services.ready = True
        log.info("embedstack ready on data dir %s", services.settings.data_dir)
        try:
            yield
        finally:
            await drain()
            await services.close()

    app = FastAPI(
        title="embedstack",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSON,
        description="Self-hosted embeddings: ingest, inference, vector search, metrics.",
    )
    app.state.services = services
    s = services.settings
    limiter = RateLimiter.of(s)
    app.state.limiter = limiter
    app.state.history = History(services.metrics.registry, s.history_interval_s, s.history_window_s)
    errors = install_error_handlers(app)
    for module in ROUTE_MODULES:
        app.include_router(module.router, responses=errors)
    # innermost of ours: refuses a query that would miss its budget before FastAPI reads it
    overloaded = status_of(Overloaded("", retry_after=1.0))
    app.add_middleware(
        QueryShedder,
        services=services,
        status=overloaded,
        body_of=error_body,
        direct=query.direct_query,
    )
    app.add_middleware(MetricsAndLimits, services=services)
    # outermost: Host check and authentication come before anything reads the request
    app.add_middleware(AccessGate, services=services, limiter=limiter)
    return app
