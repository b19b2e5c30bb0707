"""POST /v1/collections/{name}/query: embed in the collection's space, search (dense, lexical
or hybrid: registry/hybrid.py), filter, hydrate.

Every query has a latency budget (body `budget_ms`, header X-Request-Budget-Ms, or the server's
query_budget_ms); the batcher and the search gate refuse it with 429 + Retry-After when they
estimate it would miss the budget, and drop it unrun if the deadline passes while it waits.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from pydantic import ValidationError
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from embedstack.errors import InvalidInput
from embedstack.index.params import query_knobs
from embedstack.registry import hybrid
from embedstack.registry.hybrid import (
    Retrieval,
    collection_settings,
    require_lexical,
    resolve,
)
from embedstack.serving.auth import Access, reading
from embedstack.serving.http import JSON, unless_disconnected
from embedstack.serving.limits import check_filter
from embedstack.serving.responses import QueryOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.routes.documents import checked_vector
from embedstack.serving.schemas import QueryIn
from embedstack.serving.search_gate import SearchGate
from embedstack.serving.services import Services
from embedstack.serving.shed import (
    QUERY_PREFIX,
    QUERY_SUFFIX,
    embeds_text,
    query_ask,
    refusal,
)
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord

router = APIRouter()


BUDGET_HEADER = "x-request-budget-ms"


def requested_budget_ms(request: Request, body_ms: float | None = None) -> float | None:
    """The latency budget a request asks for: the body's, else the header's, else None."""
    if body_ms is not None:
        return body_ms
    raw = request.headers.get(BUDGET_HEADER)
    if raw is None:
        return None
    try:
        return float(raw)
    except ValueError:
        raise InvalidInput(
            f"header X-Request-Budget-Ms is {raw[:20]!r}: send a number of milliseconds"
        ) from None


def arrival(request: Request) -> float:
    """time.monotonic() when the request reached the server (its budget counts from there)."""
    arrived = getattr(request.state, "arrived", None)
    return arrived if isinstance(arrived, float) else time.monotonic()


def checked_text(text: str, max_chars: int) -> str:
    if not text.strip():
        raise InvalidInput("'text' is empty: send the words to search for")
    if len(text) > max_chars:
        raise InvalidInput("'text' is too long for a query: send at most a few paragraphs")
    return text


async def _embedded(
    text: str, record: CollectionRecord, space: SpaceInfo, request: Request, services: Services,
    deadline: float,
) -> np.ndarray:  # fmt: skip
    # enforces space parity (loading the model on first use, off the event loop)
    await asyncio.to_thread(services.collections.embedder_for, record, space)
    assert space.model is not None  # embedder_for refused a space without a model
    services.query_models[record.name] = space.model
    search_time = services.search_gate.estimate() or 0.0  # leave the search its share
    vecs = await unless_disconnected(
        request, services.embed(space.model, [text], "query", deadline - search_time)
    )
    return np.asarray(vecs[0], dtype=np.float32)


async def query_inputs(
    body: QueryIn, how: Retrieval, record: CollectionRecord, space: SpaceInfo,
    embed: Callable[[str], Awaitable[np.ndarray]], max_chars: int,
) -> tuple[np.ndarray | None, str | None]:  # fmt: skip
    """The query vector (None in lexical mode) and text (None for a dense vector query);
    `embed` turns the checked text into the query vector (single node: the batcher; a cluster
    API node: the router). Shared by both modes, so both check a query alike."""
    if how.mode == "dense":
        if (body.text is None) == (body.vector is None):
            raise InvalidInput("send exactly one of 'text' or 'vector'")
        if body.vector is not None:
            claimed = body.space_id is not None
            return checked_vector(body.vector, record, space, "the query vector", claimed), None
        assert body.text is not None
        text = checked_text(body.text, max_chars)
        return await embed(text), text
    if body.text is None:
        raise InvalidInput(f"mode {how.mode!r} searches words: send 'text'")
    text = checked_text(body.text, max_chars)
    if how.mode == "lexical":
        if body.vector is not None:
            raise InvalidInput("mode 'lexical' searches 'text' only: drop 'vector'")
        return None, text
    if body.vector is not None:  # hybrid with the caller's own vector for the dense half
        claimed = body.space_id is not None
        return checked_vector(body.vector, record, space, "the query vector", claimed), text
    return await embed(text), text


DENSE = Retrieval(mode="dense")


def search_knobs(body: QueryIn, record: CollectionRecord) -> dict[str, int] | None:
    """The query's per-query index parameters (`params`, `ef_search`), checked against the
    collection's index type before any search or fan-out (None: the index's own)."""
    if body.params is None and body.ef_search is None:
        return None
    return query_knobs(record.config.index.type, body.params, body.ef_search)


def retrieval(body: QueryIn, record: CollectionRecord) -> Retrieval:
    """How a query searches: its own mode, fusion, alpha and doc_scoring, else the collection's
    search settings, else the server defaults (registry/hybrid.py)."""
    if (
        body.vector is not None
        and body.group_by is None
        and body.mode is None
        and body.fusion is None
        and body.alpha is None
        and body.doc_scoring is None
    ):
        # the hot path: a plain vector query is dense, and a dense search of chunks reads
        # none of the fusion and scoring settings (checked when the collection was made)
        return DENSE
    asked = {"mode": body.mode, "fusion": body.fusion, "alpha": body.alpha,
             "doc_scoring": body.doc_scoring}  # fmt: skip
    cfg = record.config
    how = resolve(asked, collection_settings(cfg.search, cfg.model is not None, cfg.lexical))
    if body.mode is None and (body.vector is not None or body.text is None):
        how = replace(how, mode="dense")  # a vector query is dense unless it asks otherwise
    require_lexical(how.mode, cfg.lexical, record.name)
    return how


@router.post("/v1/collections/{name}/query", response_model=QueryOut)
async def query(
    name: str, body: QueryIn, request: Request, services: Services = Depends(ready_services),
    access: Access = Depends(reading),
) -> Response:  # fmt: skip
    return await answer(name, body, request, services, access)


async def direct_query(scope: Scope, receive: Receive, send: Send, raw: bytes) -> bool:
    """The hot path of POST /v1/collections/{name}/query, for QueryShedder (which has read the
    body and admitted it): validate, resolve the same dependencies and answer, or
    map an error through the app's own exception handlers (the ERROR_STATUS table), without
    FastAPI's router (it matched ~7 routes a request), dependency solver and second JSON parse
    (~30% of a vector query's server CPU in a profile at 1M). False, having sent nothing,
    when the body does not validate: the route then answers with FastAPI's 422."""
    try:
        # pydantic's own JSON parser reads what json.loads (FastAPI's) reads, big integers
        # included (orjson makes floats of them); what it refuses, FastAPI answers
        body = QueryIn.model_validate_json(raw)
    except ValidationError:
        return False
    name = scope["path"][len(QUERY_PREFIX) : -len(QUERY_SUFFIX)]
    scope["path_params"] = {"name": name}
    request = Request(scope, receive)
    try:
        services = await ready_services(request)
        response = await answer(name, body, request, services, await reading(request))
    except Exception as exc:
        handler = exception_handler(scope["app"].exception_handlers, exc)
        if handler is None:
            raise
        response = await handler(request, exc)
    await response(scope, receive, send)
    return True


def exception_handler(
    handlers: Mapping[Any, Callable[[Request, Exception], Awaitable[Response]]], exc: Exception
) -> Callable[[Request, Exception], Awaitable[Response]] | None:
    """The handler Starlette would pick for `exc`: the first of its class's MRO registered."""
    for kind in type(exc).__mro__:
        if kind in handlers:
            return handlers[kind]
    return None


async def answer(
    name: str, body: QueryIn, request: Request, services: Services, access: Access
) -> Response:
    """A query's answer (the route and `direct_query` both come here)."""
    started = time.perf_counter()
    budget = services.budget_seconds(requested_budget_ms(request, body.budget_ms))
    deadline = arrival(request) + budget
    if body.k > services.settings.max_k:
        raise InvalidInput(f"'k' is {body.k}, over the limit of {services.settings.max_k}")
    check_filter(body.filter, services.settings.max_filter_conditions)
    stored = access.qualify(name)
    # refuse, before any thread hop, what even a short text could not answer in time (the
    # same admission QueryShedder asked before FastAPI read the request)
    embeds = embeds_text(body.text, body.vector, body.mode)
    ask = query_ask(services.query_models, stored, deadline, embeds)
    refused = refusal(services.search_gate, services.batchers, ask)
    if refused is not None:
        raise refused
    # one snapshot of the collection decides the space of both the query vector and the index,
    # so a cutover in flight can never mix spaces
    if services.collections.cached(stored):  # in memory: no thread hop for a dict lookup
        record = access.resolve_sync(name)
        services.collections.require_open(record)
        space = services.collections.space(record, body.space_id)
    else:
        record = await access.resolve(name)
        services.collections.require_open(record)
        space = await asyncio.to_thread(services.collections.space, record, body.space_id)
    access.charge_texts(1)
    how = retrieval(body, record)
    knobs = search_knobs(body, record)  # refused before the query is embedded
    group = body.group_by is not None

    def embed(text: str) -> Awaitable[np.ndarray]:
        return _embedded(text, record, space, request, services, deadline)

    vec, text = await query_inputs(
        body, how, record, space, embed, services.settings.max_document_chars
    )
    args = (services.store, services.indexes, record.name, space.space_id, vec, text, body.k,
            body.filter, group, how, None, knobs)  # fmt: skip
    if how.mode == "dense" and not body.filter and _inline(services.search_gate):
        hits = _search_inline(services.search_gate, args, deadline)
    else:
        hits = await services.search_gate.run(hybrid.search, *args, deadline=deadline)
    query_id = services.quality.observe(
        record.name, space.space_id, vec, hits, body.filter is not None or group
    )  # off-hot-path quality signals (registry/quality.py)
    took = _ms(started)
    services.metrics.budget.labels("met" if took <= budget * 1000 else "missed").inc()
    return JSON(
        {"hits": hits, "collection": access.display(record.name), "space_id": space.space_id,
         "mode": how.mode, "took_ms": took, "budget_ms": round(budget * 1000, 3),
         "query_id": query_id}
    )  # fmt: skip


# a search costing (EWMA of its CPU time) at most this much runs on the event loop when no
# other search is running or queued: a hop to the search pool and back costs more than the
# search itself, and on a loaded machine each hop waits for the scheduler. CPU time, not wall
# time, decides: a search stretched by other processes is no more work, and sending it to the
# pool for that would only add two waits for a CPU
INLINE_SEARCH_S = 0.002


def _inline(gate: SearchGate) -> bool:
    cost = gate.cpu_cost
    return gate.inflight == 0 and cost is not None and cost <= INLINE_SEARCH_S


def _search_inline(gate: SearchGate, args: tuple[Any, ...], deadline: float) -> list[Any]:
    """hybrid.search(*args) right here, admitted and timed by the gate like a pooled search (an
    idle gate admits any search whose deadline has not passed)."""
    gate.check(deadline if time.monotonic() >= deadline else None)
    started, cpu = time.perf_counter(), time.thread_time()
    hits = hybrid.search(*args)
    gate.observe(time.perf_counter() - started, time.thread_time() - cpu)
    return hits


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
