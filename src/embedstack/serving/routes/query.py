"""POST /v1/collections/{name}/query: embed in the collection's space, search, filter, hydrate."""

from __future__ import annotations

import asyncio
import time

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from embedstack.errors import InvalidInput
from embedstack.registry.search import search_space
from embedstack.serving.auth import Access, reading
from embedstack.serving.http import JSON, unless_disconnected
from embedstack.serving.limits import check_filter
from embedstack.serving.responses import QueryOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.routes.documents import checked_vector
from embedstack.serving.schemas import QueryIn
from embedstack.serving.services import Services
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord

router = APIRouter()


async def _query_vector(
    body: QueryIn, record: CollectionRecord, space: SpaceInfo, request: Request,
    services: Services,
) -> np.ndarray:  # fmt: skip
    if (body.text is None) == (body.vector is None):
        raise InvalidInput("send exactly one of 'text' or 'vector'")
    if body.vector is not None:
        claimed = body.space_id is not None
        return checked_vector(body.vector, record, space, "the query vector", claimed)
    assert body.text is not None
    if not body.text.strip():
        raise InvalidInput("'text' is empty: send the words to search for")
    if len(body.text) > services.settings.max_document_chars:
        raise InvalidInput("'text' is too long for a query: send at most a few paragraphs")
    # enforces space parity (loading the model on first use, off the event loop)
    await asyncio.to_thread(services.collections.embedder_for, record, space)
    assert space.model is not None  # embedder_for refused a space without a model
    vecs = await unless_disconnected(request, services.embed(space.model, [body.text], "query"))
    return np.asarray(vecs[0], dtype=np.float32)


@router.post("/v1/collections/{name}/query", response_model=QueryOut)
async def query(
    name: str, body: QueryIn, request: Request, services: Services = Depends(ready_services),
    access: Access = Depends(reading),
) -> Response:  # fmt: skip
    started = time.perf_counter()
    if body.k > services.settings.max_k:
        raise InvalidInput(f"'k' is {body.k}, over the limit of {services.settings.max_k}")
    check_filter(body.filter, services.settings.max_filter_conditions)
    # one snapshot of the collection decides the space of both the query vector and the index,
    # so a cutover in flight can never mix spaces
    record = await access.resolve(name)
    services.collections.require_open(record)
    access.charge_texts(1)
    space = await asyncio.to_thread(services.collections.space, record, body.space_id)
    vec = await _query_vector(body, record, space, request, services)
    loop = asyncio.get_running_loop()
    knobs = {"ef_search": body.ef_search} if body.ef_search is not None else None
    hits = await loop.run_in_executor(
        services.search_pool, search_space, services.store, services.indexes, record.name,
        space.space_id, vec, body.k, body.filter, body.group_by is not None, knobs,
    )  # fmt: skip
    return JSON(
        {"hits": hits, "collection": access.display(record.name), "space_id": space.space_id,
         "took_ms": _ms(started)}
    )  # fmt: skip


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
