"""Route dependencies.

Both are `async def`: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per
request for a few attribute reads.
"""

from __future__ import annotations

from fastapi import Request

from embedstack.serving.services import Services


async def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def ready_services(request: Request) -> Services:
    services = await get_services(request)
    services.require_ready()
    return services
