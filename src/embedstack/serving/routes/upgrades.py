"""Model upgrades: start a shadow re-index, follow it, cut over, roll back, retire."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.registry.upgrade import Gate, parse_eval
from embedstack.serving.auth import Access, administering, reading
from embedstack.serving.http import JSON
from embedstack.serving.responses import RetireOut, RollbackOut, UpgradeOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.schemas import CutoverIn, RetireIn, UpgradeIn
from embedstack.serving.services import Services

router = APIRouter(prefix="/v1/collections/{name}")


def _eval(raw: list[Any] | None) -> list[tuple[str, str]] | None:
    return parse_eval(raw) if raw is not None else None


def _shown(access: Access, status: dict[str, Any]) -> dict[str, Any]:
    return {**status, "collection": access.display(str(status["collection"]))}


@router.post("/upgrade", status_code=202, response_model=UpgradeOut)
async def start_upgrade(
    name: str, body: UpgradeIn, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    name = (await access.resolve(name)).name
    await services.batcher(body.model)  # load the new model once, off the loop
    gate = Gate.parse(body.gate)
    await asyncio.to_thread(
        services.upgrades.start, name, body.model, body.auto_cutover, _eval(body.eval), gate
    )
    services.notify_workers()
    status = await asyncio.to_thread(services.upgrades.status, name)
    return JSON(_shown(access, status), status_code=202)


@router.get("/upgrade", response_model=UpgradeOut)
async def upgrade_status(
    name: str, services: Services = Depends(ready_services), access: Access = Depends(reading)
) -> Response:
    name = (await access.resolve(name)).name
    return JSON(_shown(access, await asyncio.to_thread(services.upgrades.status, name)))


@router.post("/upgrade/cutover", response_model=UpgradeOut)
async def cutover(
    name: str, body: CutoverIn | None = None, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    """Run the gate and flip the serving space; no body means `{}` (the upgrade's own gate)."""
    name = (await access.resolve(name)).name
    body = body or CutoverIn()
    gate = Gate.parse(body.gate) if body.gate is not None else None
    report = await services.upgrades.cutover(name, _eval(body.eval), gate, body.force)
    status = await asyncio.to_thread(services.upgrades.status, name)
    return JSON({**_shown(access, status), "report": report})


@router.post("/rollback", response_model=RollbackOut)
async def rollback(
    name: str, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    stored = (await access.resolve(name)).name
    space = await asyncio.to_thread(services.upgrades.rollback, stored)
    return JSON({"collection": name, "space_id": space})


@router.post("/retire", response_model=RetireOut)
async def retire(
    name: str, body: RetireIn | None = None, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    """Delete a retained space (default: the previous one); no body means `{}`."""
    body = body or RetireIn()
    stored = (await access.resolve(name)).name
    space = await asyncio.to_thread(services.upgrades.retire, stored, body.space_id)
    return JSON({"collection": name, "retired": space})
