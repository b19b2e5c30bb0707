"""Health, readiness, metrics and the model list."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.responses import PlainTextResponse, Response

from embedstack.inference.backend import ModelRegistry
from embedstack.serving.auth import Access, principal_of, reading, scraping
from embedstack.serving.http import JSON
from embedstack.serving.responses import HealthOut, ModelsOut, ReadyOut
from embedstack.serving.routes.deps import get_services
from embedstack.serving.services import Services

router = APIRouter()


@router.get("/healthz", response_model=HealthOut)
async def healthz() -> Response:
    return JSON({"status": "ok"})


@router.get("/readyz", response_model=ReadyOut)
async def readyz(request: Request, services: Services = Depends(get_services)) -> Response:
    default = services.settings.default_model
    who = principal_of(request)  # open route: a caller without a key sees no index names
    body = {
        "ready": services.ready,
        "models_loaded": sorted(services.batchers),
        # which engine serves each loaded model ("auto:openvino-bf16", "pinned:onnx-fp32", ...)
        "backends": {name: m.backend for name, m in sorted(services.models.loaded().items())},
        "indexes": [
            f"{who.display(c)}/{s}" for c, s in services.indexes.open_keys() if who and who.owns(c)
        ],
        "collections_failed": {
            who.display(c): reason
            for c, reason in services.collections.failed().items()
            if who and who.owns(c)
        },
    }
    problems = services.problems() if services.ready else []
    if problems:
        body["problems"] = problems
    ok = services.ready and default in services.batchers and not problems
    return JSON(body, status_code=200 if ok else 503)


@router.get("/metrics", response_class=PlainTextResponse)
async def metrics(
    services: Services = Depends(get_services), _: Access = Depends(scraping)
) -> Response:
    services.export_engines()
    return Response(generate_latest(services.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/models", response_model=ModelsOut)
async def list_models(
    services: Services = Depends(get_services), _: Access = Depends(reading)
) -> Response:
    return JSON(models_list(services.models))


def models_list(models: ModelRegistry) -> dict[str, object]:
    """ModelsOut: every model this server can load, with the spec of those loaded."""
    data = []
    for name in models.names():
        entry: dict[str, object] = {"id": name, "object": "model", "owned_by": "embedstack"}
        loaded = models.loaded().get(name)
        if loaded is not None:
            spec = loaded.spec
            entry.update(dim=spec.dim, metric=spec.metric, max_tokens=spec.max_tokens,
                         space_id=spec.space_id, backend=loaded.backend)  # fmt: skip
        data.append(entry)
    return {"object": "list", "data": data}
