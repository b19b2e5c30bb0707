"""create_app: the FastAPI app, lifespan, metrics middleware and the one error -> status table."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
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
    InvalidInput,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    SpaceMismatch,
    Unavailable,
)
from embedstack.serving.http import JSON, ClientGone
from embedstack.serving.responses import ErrorOut
from embedstack.serving.routes import (
    admin,
    aliases,
    collections,
    documents,
    embeddings,
    query,
    upgrades,
)
from embedstack.serving.services import Services

log = logging.getLogger(__name__)

# The only table from error kind to HTTP status. Subclasses before their bases.
ERROR_STATUS: tuple[tuple[type[EmbedStackError], int], ...] = (
    (PayloadTooLarge, 413),
    (InvalidInput, 422),
    (NotFound, 404),
    (SpaceMismatch, 409),
    (Conflict, 409),
    (Overloaded, 429),
    (Unavailable, 503),
    # settings are checked at startup (the server does not start); one met later is this
    # server's setup, not the client's request and not a bug: unavailable here
    (ConfigError, 503),
)
CLIENT_CLOSED = 499


def status_of(exc: EmbedStackError) -> int:
    for kind, status in ERROR_STATUS:
        if isinstance(exc, kind):
            return status
    return 500


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message}}


async def _domain_error(_: Request, exc: Exception) -> Response:
    assert isinstance(exc, EmbedStackError)
    status = status_of(exc)
    headers = (
        {"Retry-After": str(max(1, round(exc.retry_after)))}
        if isinstance(exc, Overloaded)
        else None
    )
    return JSON(error_body(type(exc).__name__, exc.message), status_code=status, headers=headers)


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
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            body = error_body(
                "PayloadTooLarge",
                f"request body is {int(length)} bytes, over the {limit}-byte limit: "
                "split it into several requests",
            )
            await JSON(body, status_code=413)(scope, receive, send)
            return
        started = time.perf_counter()
        status = [500]
        received = [0]

        async def limited_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                received[0] += len(message.get("body", b""))
                if received[0] > limit:
                    raise PayloadTooLarge(
                        f"request body is over the {limit}-byte limit: split it into several"
                        " requests"
                    )
            return message

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
    """Keep indexes current with writes from other processes; snapshot them; export gauges."""
    s = services.settings
    last_snapshot = time.monotonic()
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=s.sync_interval_s)
        try:
            await asyncio.to_thread(services.indexes.sync_all)
            await services.upgrades.refresh()
            for status, n in (await asyncio.to_thread(services.queue.counts)).items():
                services.metrics.queue_depth.labels(status).set(n)
            if time.monotonic() - last_snapshot >= s.snapshot_interval_s:
                await asyncio.to_thread(services.indexes.snapshot_all)
                last_snapshot = time.monotonic()
        except Exception:
            log.exception("maintenance pass failed; retrying")


def create_app(services: Services) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        stop = asyncio.Event()
        await asyncio.to_thread(services.collections.open_all)
        await services.batcher(services.settings.default_model)
        recovered = await asyncio.to_thread(services.recover_pending)
        if recovered:
            log.info("re-enqueued %d recovery jobs for documents not yet indexed", recovered)
        tasks = [asyncio.create_task(_maintenance(services, stop))]
        for i in range(services.settings.workers):
            worker = services.make_worker(f"serve-{i}")
            services.workers.append(worker)
            tasks.append(asyncio.create_task(worker.run(stop)))
        services.ready = True
        log.info("embedstack ready on data dir %s", services.settings.data_dir)
        try:
            yield
        finally:
            services.ready = False
            stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            await services.close()

    app = FastAPI(
        title="embedstack",
        version="0.1.0",
        lifespan=lifespan,
        default_response_class=JSON,
        description="Self-hosted embeddings: ingest, inference, vector search, metrics.",
    )
    app.state.services = services
    app.add_exception_handler(EmbedStackError, _domain_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(ClientGone, _client_gone)
    app.add_exception_handler(Exception, _unexpected)
    errors: dict[int | str, dict[str, Any]] = {
        status: {"model": ErrorOut, "description": kind.__doc__ or kind.__name__}
        for kind, status in ERROR_STATUS
    }
    for module in (admin, embeddings, collections, documents, query, upgrades, aliases):
        app.include_router(module.router, responses=errors)
    app.add_middleware(MetricsAndLimits, services=services)
    return app
