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
from embedstack.storage.store import CollectionRecord

router = APIRouter()
GROUP_FETCH_ROUNDS = 6


async def _query_vector(
    body: QueryIn, record: CollectionRecord, request: Request, services: Services
) -> np.ndarray:
    if (body.text is None) == (body.vector is None):
        raise InvalidInput("send exactly one of 'text' or 'vector'")
    if body.vector is not None:
        space = body.space_id if record.config.get("model") else body.space_id or record.space_id
        return checked_vector(body.vector, record, "the query vector", space)
    assert body.text is not None
    if not body.text.strip():
        raise InvalidInput("'text' is empty: send the words to search for")
    if len(body.text) > services.settings.max_document_chars:
        raise InvalidInput("'text' is too long for a query: send at most a few paragraphs")
    embedder = services.collections.embedder_for(record)  # enforces space parity
    vecs = await unless_disconnected(
        request, services.embed(embedder.spec.name, [body.text], "query")
    )
    return np.asarray(vecs[0], dtype=np.float32)


async def _search(
    services: Services, name: str, vec: np.ndarray, k: int, allow: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    loop = asyncio.get_running_loop()
    scores, ids = await loop.run_in_executor(
        services.search_pool, services.indexes.search, name, vec[None, :], k, allow
    )
    keep = ids[0] >= 0
    return scores[0][keep], ids[0][keep]


@router.post("/v1/collections/{name}/query")
async def query(
    name: str, body: QueryIn, request: Request, services: Services = Depends(ready_services)
) -> Response:
    started = time.perf_counter()
    if body.k > services.settings.max_k:
        raise InvalidInput(f"'k' is {body.k}, over the limit of {services.settings.max_k}")
    record = services.collections.get(name)
    vec = await _query_vector(body, record, request, services)
    allow = None
    if body.filter:
        allow = await asyncio.to_thread(
            services.store.filter_chunk_ids, name, record.space_id, body.filter
        )
        if allow.size == 0:
            return JSON({"hits": [], "space_id": record.space_id, "took_ms": _ms(started)})
    fetch = body.k if body.group_by is None else body.k * 4
    for _ in range(GROUP_FETCH_ROUNDS):
        scores, ids = await _search(services, name, vec, fetch, allow)
        rows = await asyncio.to_thread(services.store.hydrate, ids.tolist())
        hits = _hits(scores, ids, rows, body.k, body.group_by is not None)
        if len(hits) >= body.k or len(ids) < fetch:
            break
        fetch *= 4  # grouping or a concurrent delete left us short: fetch deeper
    return JSON({"hits": hits, "space_id": record.space_id, "took_ms": _ms(started)})


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
