"""Model upgrades on a cluster API node: the single-node routes (serving/routes/upgrades.py), the
same bodies, response models and refusals, run by cluster/upgrades.py over the shared catalog."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter
from starlette.responses import Response

from embedstack.cluster.upgrades import ClusterUpgrades
from embedstack.registry.upgrade import Gate, parse_eval
from embedstack.serving.http import JSON
from embedstack.serving.responses import RetireOut, RollbackOut, UpgradeOut
from embedstack.serving.schemas import CutoverIn, RetireIn, UpgradeIn


def upgrade_routes(upgrades: ClusterUpgrades) -> APIRouter:
    api = APIRouter(prefix="/v1/collections/{name}")

    @api.post("/upgrade", status_code=202, response_model=UpgradeOut)
    async def start_upgrade(name: str, body: UpgradeIn) -> Response:
        """Register a shadow space for `model`; every shard's replicas back-fill it."""
        gate = Gate.parse(body.gate)
        status = await asyncio.to_thread(
            upgrades.start, name, body.model, body.auto_cutover, parse_eval(body.eval), gate
        )
        return JSON(status, status_code=202)

    @api.get("/upgrade", response_model=UpgradeOut)
    async def upgrade_status(name: str) -> Response:
        return JSON(await asyncio.to_thread(upgrades.status, name))

    @api.post("/upgrade/cutover", response_model=UpgradeOut)
    async def cutover(name: str, body: CutoverIn | None = None) -> Response:
        """Run the gate and flip the serving space in the catalog; no body means `{}`."""
        body = body or CutoverIn()
        gate = Gate.parse(body.gate) if body.gate is not None else None
        report = await asyncio.to_thread(
            upgrades.cutover, name, parse_eval(body.eval), gate, body.force
        )
        status = await asyncio.to_thread(upgrades.status, name)
        return JSON({**status, "report": report})

    @api.post("/rollback", response_model=RollbackOut)
    async def rollback(name: str) -> Response:
        space = await asyncio.to_thread(upgrades.rollback, name)
        return JSON({"collection": name, "space_id": space})

    @api.post("/retire", response_model=RetireOut)
    async def retire(name: str, body: RetireIn | None = None) -> Response:
        """Delete a retained space (default: the previous one); no body means `{}`."""
        body = body or RetireIn()
        space = await asyncio.to_thread(upgrades.retire, name, body.space_id)
        return JSON({"collection": name, "retired": space})

    return api
