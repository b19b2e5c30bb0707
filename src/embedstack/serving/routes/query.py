"""POST /v1/collections/{name}/query: embed in the collection's space, search, filter, hydrate."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from embedstack.errors import InvalidInput
from embedstack.registry import hybrid
from embedstack.registry.hybrid import Retrieval, collection_settings, resolve
from embedstack.serving.http import JSON, unless_disconnected
from embedstack.serving.responses import QueryOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.routes.documents import checked_vector
from embedstack.serving.schemas import QueryIn
from embedstack.serving.services import Services
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord

router = APIRouter()


def _checked_text(text: str, services: Services) -> str:
    if not text.strip():
        raise InvalidInput("'text' is empty: send the words to search for")
    if len(text) > services.settings.max_document_chars:
        raise InvalidInput("'text' is too long for a query: send at most a few paragraphs")
    return text


async def _embedded(
    text: str, record: CollectionRecord, space: SpaceInfo, request: Request, services: Services
) -> np.ndarray:
    # enforces space parity (loading the model on first use, off the event loop)
    await asyncio.to_thread(services.collections.embedder_for, record, space)
    assert space.model is not None  # embedder_for refused a space without a model
    vecs = await unless_disconnected(request, services.embed(space.model, [text], "query"))
    return np.asarray(vecs[0], dtype=np.float32)


async def _query_inputs(
    body: QueryIn, how: Retrieval, record: CollectionRecord, space: SpaceInfo, request: Request,
    services: Services,
) -> tuple[np.ndarray | None, str | None]:  # fmt: skip
    """The query vector (None in lexical mode) and text (None for a dense vector query)."""
    if how.mode == "dense":
        if (body.text is None) == (body.vector is None):
            raise InvalidInput("send exactly one of 'text' or 'vector'")
        if body.vector is not None:
            claimed = body.space_id is not None
            return checked_vector(body.vector, record, space, "the query vector", claimed), None
        assert body.text is not None
        text = _checked_text(body.text, services)
        return await _embedded(text, record, space, request, services), text
    if body.text is None:
        raise InvalidInput(f"mode {how.mode!r} searches words: send 'text'")
    text = _checked_text(body.text, services)
    if how.mode == "lexical":
        if body.vector is not None:
            raise InvalidInput("mode 'lexical' searches 'text' only: drop 'vector'")
        return None, text
    if body.vector is not None:  # hybrid with the caller's own vector for the dense half
        claimed = body.space_id is not None
        return checked_vector(body.vector, record, space, "the query vector", claimed), text
    return await _embedded(text, record, space, request, services), text


def _retrieval(body: QueryIn, record: CollectionRecord) -> Retrieval:
    asked = {"mode": body.mode, "fusion": body.fusion, "alpha": body.alpha,
             "doc_scoring": body.doc_scoring}  # fmt: skip
    cfg = record.config
    how = resolve(asked, collection_settings(cfg.search, cfg.model is not None))
    if body.mode is None and (body.vector is not None or body.text is None):
        how = replace(how, mode="dense")  # a vector query is dense unless it asks otherwise
    return how


@router.post("/v1/collections/{name}/query", response_model=QueryOut)
async def query(
    name: str, body: QueryIn, request: Request, services: Services = Depends(ready_services)
) -> Response:
    started = time.perf_counter()
    if body.k > services.settings.max_k:
        raise InvalidInput(f"'k' is {body.k}, over the limit of {services.settings.max_k}")
    # one snapshot of the collection decides the space of both the query vector and the index,
    # so a cutover in flight can never mix spaces
    record = await asyncio.to_thread(services.collections.resolve, name)
    space = await asyncio.to_thread(services.collections.space, record, body.space_id)
    how = _retrieval(body, record)
    loop = asyncio.get_running_loop()
    group = body.group_by is not None
    ahead = None  # hybrid: the lexical half runs while the query is embedded
    if how.mode == "hybrid" and body.text is not None and body.text.strip():
        ahead = loop.run_in_executor(
            services.search_pool, hybrid.lexical_candidates, services.store, record.name,
            space.space_id, body.text, body.k, body.filter, group,
        )  # fmt: skip
    try:
        vec, text = await _query_inputs(body, how, record, space, request, services)
    except BaseException:
        if ahead is not None:
            await asyncio.gather(ahead, return_exceptions=True)
        raise
    lexical_first = await ahead if ahead is not None else None
    hits = await loop.run_in_executor(
        services.search_pool, hybrid.search, services.store, services.indexes, record.name,
        space.space_id, vec, text, body.k, body.filter, group, how, lexical_first,
    )  # fmt: skip
    return JSON(
        {"hits": hits, "collection": record.name, "space_id": space.space_id,
         "mode": how.mode, "took_ms": _ms(started)}
    )  # fmt: skip


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
