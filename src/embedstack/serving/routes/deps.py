"""Route dependencies."""

from __future__ import annotations

from fastapi import Request

from embedstack.serving.services import Services


def get_services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def ready_services(request: Request) -> Services:
    services = get_services(request)
    services.require_ready()
    return services
