"""POST /v1/collections/{name}/query: embed in the collection's space, search, filter, hydrate."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from embedstack.errors import InvalidInput
from embedstack.serving.http import JSON, unless_disconnected
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.routes.documents import checked_vector
from embedstack.serving.schemas import QueryIn
from embedstack.serving.services import Services
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord

router = APIRouter()
GROUP_FETCH_ROUNDS = 6


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
    embedder = services.collections.embedder_for(record, space)  # enforces space parity
    vecs = await unless_disconnected(
        request, services.embed(embedder.spec.name, [body.text], "query")
    )
    return np.asarray(vecs[0], dtype=np.float32)


async def search_space(
    services: Services, record: CollectionRecord, space: SpaceInfo, vec: np.ndarray, k: int,
    flt: dict[str, Any] | None = None, group: bool = False,
) -> list[dict[str, Any]]:  # fmt: skip
    """k-NN in one space of a collection: filter, over-fetch for grouping, hydrate."""
    allow = None
    if flt:
        allow = await asyncio.to_thread(
            services.store.filter_chunk_ids, record.name, space.space_id, flt
        )
        if allow.size == 0:
            return []
    loop = asyncio.get_running_loop()
    fetch = k * 4 if group else k
    hits: list[dict[str, Any]] = []
    for _ in range(GROUP_FETCH_ROUNDS):
        scores, ids = await loop.run_in_executor(
            services.search_pool, services.indexes.search, record.name, space.space_id,
            vec[None, :], fetch, allow,
        )  # fmt: skip
        keep = ids[0] >= 0
        found_scores, found_ids = scores[0][keep], ids[0][keep]
        rows = await asyncio.to_thread(services.store.hydrate, found_ids.tolist())
        hits = _hits(found_scores, found_ids, rows, k, group)
        if len(hits) >= k or len(found_ids) < fetch:
            break
        fetch *= 4  # grouping or a concurrent delete left us short: fetch deeper
    return hits


@router.post("/v1/collections/{name}/query")
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
    vec = await _query_vector(body, record, space, request, services)
    hits = await search_space(
        services, record, space, vec, body.k, body.filter, body.group_by is not None
    )
    return JSON(
        {"hits": hits, "collection": record.name, "space_id": space.space_id,
         "took_ms": _ms(started)}
    )  # fmt: skip


def _hits(
    scores: np.ndarray, ids: np.ndarray, rows: dict[int, Any], k: int, group: bool
) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = []
    seen: set[str] = set()
    for score, chunk_id in zip(scores.tolist(), ids.tolist(), strict=True):
        row = rows.get(chunk_id)
        if row is None:  # deleted between search and hydrate
            continue
        if group:
            if row.document_id in seen:
                continue
            seen.add(row.document_id)
        hits.append(
            {
                "document_id": row.document_id,
                "chunk_id": f"{row.document_id}#{row.ordinal}",
                "score": score,
                "text": row.text,
                "metadata": row.metadata,
            }
        )
        if len(hits) == k:
            break
    return hits


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
