"""Collections: create, list, describe, delete."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.errors import InvalidInput
from embedstack.registry.collections import check_name
from embedstack.serving.auth import Access, administering, reading
from embedstack.serving.http import JSON
from embedstack.serving.responses import CollectionOut, CollectionsOut, DeletedOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.schemas import CollectionCreate, CollectionPatch
from embedstack.serving.services import Services

router = APIRouter(prefix="/v1/collections")


@router.post("", status_code=201, response_model=CollectionOut)
async def create_collection(
    body: CollectionCreate, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    check_name(body.name)
    access.grant(body.name)
    access.note(collection=body.name)
    if body.model is not None:
        await services.batcher(body.model)  # loads the model once, off the loop
    record = await asyncio.to_thread(
        services.collections.create,
        access.qualify(body.name),
        body.model,
        body.dim,
        body.metric,
        body.chunking.model_dump() if body.chunking else None,
        body.index,
        body.search.model_dump(exclude_none=True) if body.search else None,
        body.lexical,
        body.lexical_fields,
        body.record.model_dump() if body.record else None,
    )
    described = await asyncio.to_thread(services.collections.describe, record)
    return JSON({**described, "name": body.name}, status_code=201)


@router.get("", response_model=CollectionsOut)
async def list_collections(
    services: Services = Depends(ready_services), access: Access = Depends(reading)
) -> Response:
    records = await asyncio.to_thread(services.store.list_collections)
    records = [r for r in records if access.owns(r.name)]  # this key's tenant and grants
    out = [await asyncio.to_thread(services.collections.describe, r) for r in records]
    return JSON({"collections": [{**d, "name": access.display(d["name"])} for d in out]})


@router.get("/{name}", response_model=CollectionOut)
async def get_collection(
    name: str, services: Services = Depends(ready_services), access: Access = Depends(reading)
) -> Response:
    record = await access.resolve(name)
    described = await asyncio.to_thread(services.collections.describe, record)
    shown = access.display(record.name)
    return JSON({**described, "name": shown, "rebuilding": record.name in services.rebuilding})


@router.delete("/{name}", response_model=DeletedOut)
async def delete_collection(
    name: str, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    access.grant(name)
    await asyncio.to_thread(services.delete_collection, access.qualify(name))
    return JSON({"deleted": name})


@router.patch("/{name}", status_code=202, response_model=CollectionOut)
async def update_collection(
    name: str, body: CollectionPatch, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    """Change index settings (the new index is built aside from the store and swapped in
    atomically, so queries keep being answered by the old one until then) and/or the query
    defaults (`search`: applied at once). 202 either way."""
    if body.index is None and body.search is None:
        raise InvalidInput("send 'index' and/or 'search' to change")
    record = await access.resolve(name)
    stored = record.name
    if body.search is not None:
        fields = body.search.model_dump(exclude_unset=True)
        record = await asyncio.to_thread(services.collections.change_search, stored, fields)
    if body.index is not None:
        record = await asyncio.to_thread(services.collections.change_index, stored, body.index)
        services.start_rebuild(record)
    described = await asyncio.to_thread(services.collections.describe, record)
    shown = access.display(record.name)
    rebuilding = body.index is not None or record.name in services.rebuilding
    return JSON({**described, "name": shown, "rebuilding": rebuilding}, status_code=202)
