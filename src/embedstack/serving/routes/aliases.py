"""Collection aliases: a stable name whose collection can be switched atomically."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.errors import InvalidInput
from embedstack.registry.collections import NAME_RE
from embedstack.serving.auth import Access, administering, reading
from embedstack.serving.http import JSON
from embedstack.serving.responses import AliasesOut, AliasOut, DeletedOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.schemas import AliasIn
from embedstack.serving.services import Services

router = APIRouter(prefix="/v1/aliases")


@router.post("", response_model=AliasOut)
async def set_alias(
    body: AliasIn, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    if not NAME_RE.match(body.alias):
        raise InvalidInput(f"alias {body.alias!r} is not valid: use the rules of collection names")
    access.grant(body.alias)
    access.grant(body.collection)
    access.note(collection=body.collection, alias=body.alias)
    alias, collection = access.qualify(body.alias), access.qualify(body.collection)
    await asyncio.to_thread(services.store.set_alias, alias, collection)
    return JSON({"alias": body.alias, "collection": body.collection})


@router.get("", response_model=AliasesOut)
async def list_aliases(
    services: Services = Depends(ready_services), access: Access = Depends(reading)
) -> Response:
    found = await asyncio.to_thread(services.store.aliases)
    shown = {
        access.display(a): access.display(c)
        for a, c in found.items()
        if access.owns(a) and access.owns(c)
    }
    return JSON({"aliases": shown})


@router.delete("/{alias}", response_model=DeletedOut)
async def delete_alias(
    alias: str, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    access.grant(alias)
    access.note(alias=alias)
    await asyncio.to_thread(services.store.delete_alias, access.qualify(alias))
    return JSON({"deleted": alias})
