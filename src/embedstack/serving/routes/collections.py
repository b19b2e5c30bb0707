"""Collections: create, list, describe, delete."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.errors import InvalidInput
from embedstack.serving.http import JSON
from embedstack.serving.responses import CollectionOut, CollectionsOut, DeletedOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.schemas import CollectionCreate, CollectionPatch
from embedstack.serving.services import Services

router = APIRouter(prefix="/v1/collections")


@router.post("", status_code=201, response_model=CollectionOut)
async def create_collection(
    body: CollectionCreate, services: Services = Depends(ready_services)
) -> Response:
    if body.model is not None:
        await services.batcher(body.model)  # loads the model once, off the loop
    record = await asyncio.to_thread(
        services.collections.create,
        body.name,
        body.model,
        body.dim,
        body.metric,
        body.chunking.model_dump() if body.chunking else None,
        body.index,
        body.search.model_dump(exclude_none=True) if body.search else None,
    )
    described = await asyncio.to_thread(services.collections.describe, record)
    return JSON(described, status_code=201)


@router.get("", response_model=CollectionsOut)
async def list_collections(services: Services = Depends(ready_services)) -> Response:
    records = await asyncio.to_thread(services.store.list_collections)
    out = [await asyncio.to_thread(services.collections.describe, r) for r in records]
    return JSON({"collections": out})


@router.get("/{name}", response_model=CollectionOut)
async def get_collection(name: str, services: Services = Depends(ready_services)) -> Response:
    record = await asyncio.to_thread(services.collections.resolve, name)
    described = await asyncio.to_thread(services.collections.describe, record)
    return JSON({**described, "rebuilding": record.name in services.rebuilding})


@router.delete("/{name}", response_model=DeletedOut)
async def delete_collection(name: str, services: Services = Depends(ready_services)) -> Response:
    await asyncio.to_thread(services.collections.delete, name)
    return JSON({"deleted": name})


@router.patch("/{name}", status_code=202, response_model=CollectionOut)
async def update_collection(
    name: str, body: CollectionPatch, services: Services = Depends(ready_services)
) -> Response:
    """Change index settings (the new index is built aside from the store and swapped in
    atomically, so queries keep being answered by the old one until then: 202) and/or the query
    defaults (`search`: applied at once: 200)."""
    if body.index is None and body.search is None:
        raise InvalidInput("send 'index' and/or 'search' to change")
    record = await asyncio.to_thread(services.collections.resolve, name)
    if body.search is not None:
        fields = body.search.model_dump(exclude_unset=True)
        record = await asyncio.to_thread(services.collections.change_search, name, fields)
    if body.index is not None:
        record = await asyncio.to_thread(services.collections.change_index, name, body.index)
        services.start_rebuild(record)
    described = await asyncio.to_thread(services.collections.describe, record)
    rebuilding = body.index is not None or record.name in services.rebuilding
    return JSON({**described, "rebuilding": rebuilding}, status_code=202 if body.index else 200)
