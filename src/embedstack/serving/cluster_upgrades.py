"""Model upgrades on a cluster API node: the single-node routes (serving/routes/upgrades.py), the
same bodies, response models and refusals, run by cluster/upgrades.py over the shared catalog."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.cluster.upgrades import ClusterUpgrades
from embedstack.registry.upgrade import Gate, parse_eval
from embedstack.serving.cluster_auth import ClusterAccess
from embedstack.serving.http import JSON
from embedstack.serving.responses import RetireOut, RollbackOut, UpgradeOut
from embedstack.serving.schemas import CutoverIn, RetireIn, UpgradeIn


def upgrade_routes(upgrades: ClusterUpgrades, access_of: Callable[..., ClusterAccess]) -> APIRouter:
    """The upgrade routes; `access_of` resolves names in the caller's tenant."""
    api = APIRouter(prefix="/v1/collections/{name}")
    caller = Depends(access_of)

    async def stored(access: ClusterAccess, name: str) -> str:
        return (await asyncio.to_thread(access.resolve, name)).name

    def shown(access: ClusterAccess, status: dict[str, Any]) -> dict[str, Any]:
        return {**status, "collection": access.principal.display(str(status["collection"]))}

    @api.post("/upgrade", status_code=202, response_model=UpgradeOut)
    async def start_upgrade(name: str, body: UpgradeIn, access: ClusterAccess = caller) -> Response:
        """Register a shadow space for `model`; every shard's replicas back-fill it."""
        gate = Gate.parse(body.gate)
        status = await asyncio.to_thread(
            upgrades.start, await stored(access, name), body.model, body.auto_cutover,
            parse_eval(body.eval), gate,
        )  # fmt: skip
        return JSON(shown(access, status), status_code=202)

    @api.get("/upgrade", response_model=UpgradeOut)
    async def upgrade_status(name: str, access: ClusterAccess = caller) -> Response:
        status = await asyncio.to_thread(upgrades.status, await stored(access, name))
        return JSON(shown(access, status))

    @api.post("/upgrade/cutover", response_model=UpgradeOut)
    async def cutover(
        name: str, body: CutoverIn | None = None, access: ClusterAccess = caller
    ) -> Response:
        """Run the gate and flip the serving space in the catalog; no body means `{}`."""
        body = body or CutoverIn()
        gate = Gate.parse(body.gate) if body.gate is not None else None
        coll = await stored(access, name)
        report = await asyncio.to_thread(
            upgrades.cutover, coll, parse_eval(body.eval), gate, body.force
        )
        status = await asyncio.to_thread(upgrades.status, coll)
        return JSON({**shown(access, status), "report": report})

    @api.post("/rollback", response_model=RollbackOut)
    async def rollback(name: str, access: ClusterAccess = caller) -> Response:
        space = await asyncio.to_thread(upgrades.rollback, await stored(access, name))
        return JSON({"collection": name, "space_id": space})

    @api.post("/retire", response_model=RetireOut)
    async def retire(
        name: str, body: RetireIn | None = None, access: ClusterAccess = caller
    ) -> Response:
        """Delete a retained space (default: the previous one); no body means `{}`."""
        body = body or RetireIn()
        space = await asyncio.to_thread(upgrades.retire, await stored(access, name), body.space_id)
        return JSON({"collection": name, "retired": space})

    return api
