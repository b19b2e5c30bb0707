"""GET /v1/collections/{name}/stats: per space, index size, drift, online recall and feedback;
POST /v1/collections/{name}/drift/baseline: start a new drift baseline (after an intended
change of what users ask)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.errors import NotFound
from embedstack.serving.auth import Access, administering, reading
from embedstack.serving.http import JSON
from embedstack.serving.responses import BaselineOut, StatsOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.services import Services

router = APIRouter(prefix="/v1/collections")


def _space_stats(
    services: Services, collection: str, space_id: str, active: bool
) -> dict[str, Any]:
    try:
        live = services.indexes.get(collection, space_id)
        vectors, size, kind = live.index.count(), live.index.memory_bytes(), live.config.type
    except NotFound:
        vectors, size, kind = 0, 0, "none"
    return {"space_id": space_id, "active": active, "vectors": vectors, "index_bytes": size,
            "index_type": kind, **services.quality.report(collection, space_id)}  # fmt: skip


@router.get("/{name}/stats", response_model=StatsOut)
async def collection_stats(
    name: str, services: Services = Depends(ready_services), access: Access = Depends(reading)
) -> Response:
    record = await access.resolve(name)
    spaces = await asyncio.to_thread(services.store.spaces, record.name)
    out = [
        await asyncio.to_thread(
            _space_stats, services, record.name, s.space_id, s.space_id == record.space_id
        )
        for s in spaces
    ]
    return JSON({"collection": access.display(record.name), "spaces": out})


@router.post("/{name}/drift/baseline", response_model=BaselineOut)
async def reset_drift_baseline(
    name: str, services: Services = Depends(ready_services),
    access: Access = Depends(administering),
) -> Response:  # fmt: skip
    """The next `drift_baseline_queries` queries of the serving space become its baseline."""
    record = await access.resolve(name)
    services.quality.reset_baseline(record.name, record.space_id)
    return JSON({"collection": access.display(record.name), "space_id": record.space_id,
                 "baseline_queries": services.settings.drift_baseline_queries})  # fmt: skip
