"""API keys and the audit log over HTTP: an admin key manages the keys of its own tenant.

A key never hands out more than it holds: the scopes and collection grants of a key it creates
are within its own. The full key is in the answer to create and rotate only; listings show the
prefix. (The CLI, `embedstack keys ...` on the data dir, manages every tenant.)
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.responses import Response

from embedstack.errors import Forbidden, NotFound
from embedstack.serving.auth import Access, Principal, administering
from embedstack.serving.http import JSON
from embedstack.serving.responses import AuditOut, KeyCreatedOut, KeyOut, KeysOut
from embedstack.storage.keys import KeyRecord

router = APIRouter()


class KeyIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    scopes: list[str] = Field(["read"], description="read, write, admin, metrics")
    collections: list[str] | None = Field(None, description="grants; none: every collection")
    rate_rps: float | None = Field(None, gt=0, description="requests/s; none: server default")
    rate_texts: float | None = Field(None, gt=0, description="texts/s; none: server default")
    name: str | None = Field(None, max_length=200, description="a note: who or what uses it")


class RotateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    grace_s: float = Field(0.0, ge=0, le=30 * 86400, description="old key valid this long")


def covers(p: Principal, scopes: list[str], collections: list[str] | None) -> None:
    for s in scopes:
        if s in ("read", "write", "admin", "metrics") and not p.may(s):
            raise Forbidden(f"this API key cannot hand out the {s!r} scope it does not hold")
    if p.collections is not None and (collections is None or not set(collections) <= p.collections):
        raise Forbidden(
            "this API key is limited to collections "
            f"{sorted(p.collections)}: grant a subset of them"
        )


def _own(access: Access, prefix: str) -> KeyRecord:
    try:
        record = access.services.store.get_key(prefix)
    except NotFound:
        record = None
    if record is None or record.tenant != access.tenant:
        raise NotFound(f"no API key with prefix {prefix!r}")
    held = record.collections
    covers(access.principal, list(record.scopes), list(held) if held is not None else None)
    return record


@router.post("/v1/keys", status_code=201, response_model=KeyCreatedOut)
async def create_key(body: KeyIn, access: Access = Depends(administering)) -> Response:
    covers(access.principal, body.scopes, body.collections)
    full, record = await asyncio.to_thread(
        access.services.store.create_key, access.tenant, body.scopes, body.collections,
        body.rate_rps, body.rate_texts, body.name,
    )  # fmt: skip
    access.note(key=record.prefix, scopes=list(record.scopes))
    return JSON({**record.public(), "key": full}, status_code=201)


@router.get("/v1/keys", response_model=KeysOut)
async def list_keys(access: Access = Depends(administering)) -> Response:
    records = await asyncio.to_thread(access.services.store.keys, access.tenant)
    return JSON({"keys": [r.public() for r in records]})


@router.post("/v1/keys/{prefix}/rotate", status_code=201, response_model=KeyCreatedOut)
async def rotate_key(
    prefix: str, body: RotateIn | None = None, access: Access = Depends(administering)
) -> Response:
    await asyncio.to_thread(_own, access, prefix)
    grace = (body or RotateIn()).grace_s
    full, record = await asyncio.to_thread(access.services.store.rotate_key, prefix, grace)
    access.note(key=prefix, new_key=record.prefix, grace_s=grace)
    return JSON({**record.public(), "key": full}, status_code=201)


@router.delete("/v1/keys/{prefix}", response_model=KeyOut)
async def revoke_key(prefix: str, access: Access = Depends(administering)) -> Response:
    await asyncio.to_thread(_own, access, prefix)
    record = await asyncio.to_thread(access.services.store.revoke_key, prefix)
    access.note(key=prefix)
    return JSON(record.public())


@router.get("/v1/audit", response_model=AuditOut)
async def audit(
    limit: int = Query(100, ge=1, le=1000),
    before: int | None = Query(None, description="entries older than this id"),
    access: Access = Depends(administering),
) -> Response:
    entries = await asyncio.to_thread(access.services.store.audit, access.tenant, limit, before)
    return JSON({"entries": [e.public() for e in entries]})
