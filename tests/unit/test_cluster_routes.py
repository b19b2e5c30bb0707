"""A cluster API node has every single-node route: served, or a 501 naming cluster mode."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import redis
from fastapi.routing import APIRoute

from embedstack.cluster.keys import RedisKeys
from embedstack.config import Settings
from embedstack.obs.metrics import Metrics
from embedstack.serving.app import ROUTE_MODULES
from embedstack.serving.cluster_app import create_cluster_app
from embedstack.serving.cluster_auth import scope_for


def _routes(routers: Any) -> set[tuple[str, str]]:
    return {
        (r.path, m)
        for router in routers
        for r in router.routes
        if isinstance(r, APIRoute) and r.include_in_schema
        for m in (r.methods or set()) - {"HEAD"}
    }


def test_every_single_node_route_is_served() -> None:
    """No single-node route is left to the 501 refusal (the routes are only listed: no handler
    reaches the router or Redis); tests/integration/test_cluster.py calls each for real."""
    unused = redis.Redis(host="127.0.0.1", port=1)  # never connected: nothing is called
    catalog = SimpleNamespace(client=lambda: unused, prefix="test:")
    router = cast(Any, SimpleNamespace(on_round=[], catalog=catalog, metrics=Metrics()))
    settings = Settings(enable_test_models=True, insecure_no_auth=True)
    app = create_cluster_app(router, settings, RedisKeys(None))
    single = _routes(m.router for m in ROUTE_MODULES)
    openapi = app.openapi()
    cluster = {(p, m.upper()) for p, ms in openapi["paths"].items() for m in ms}
    assert single <= cluster, sorted(single - cluster)
    assert router.on_round, "auto cutovers run in the reconcile loop"
    refused = [
        (path, method)
        for path, method in single
        if "single node only" in openapi["paths"][path][method.lower()].get("summary", "")
    ]
    assert not refused, refused


def test_a_routes_scope_is_the_one_single_node_declares() -> None:
    assert scope_for("GET", "/v1/collections/docs") == "read"
    assert scope_for("POST", "/v1/collections/docs/query") == "read"
    assert scope_for("POST", "/v1/collections/docs/documents") == "write"
    assert scope_for("DELETE", "/v1/collections/docs/documents/a") == "write"
    assert scope_for("POST", "/v1/collections") == "admin"
    assert scope_for("POST", "/v1/collections/docs/upgrade/cutover") == "admin"
    assert scope_for("GET", "/v1/keys") == "admin"
    assert scope_for("POST", "/v1/collections/docs/vectors") == "write"
    assert scope_for("POST", "/v1/collections/docs/records") == "write"
    assert scope_for("PATCH", "/v1/collections/docs") == "admin"
    assert scope_for("POST", "/v1/embeddings") == "read"
