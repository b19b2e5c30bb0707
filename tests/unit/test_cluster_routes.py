"""A cluster API node has every single-node route: served, or a 501 naming cluster mode."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from fastapi.routing import APIRoute
from fastapi.testclient import TestClient

from embedstack.cluster.keys import RedisKeys
from embedstack.config import Settings
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


def test_every_single_node_route_is_served_or_refused_with_501() -> None:
    # the routes are only listed and the refusals called: no handler reaches the router
    router = cast(Any, SimpleNamespace(on_round=[], catalog=None))
    settings = Settings(enable_test_models=True, insecure_no_auth=True)
    app = create_cluster_app(router, settings, RedisKeys(None))
    single = _routes(m.router for m in ROUTE_MODULES)
    openapi = app.openapi()
    cluster = {(p, m.upper()) for p, ms in openapi["paths"].items() for m in ms}
    assert single <= cluster, sorted(single - cluster)
    assert router.on_round, "auto cutovers run in the reconcile loop"
    served = {
        ("/v1/collections/{name}/upgrade", "POST"),
        ("/v1/collections/{name}/upgrade/cutover", "POST"),
        ("/v1/collections/{name}/rollback", "POST"),
        ("/v1/collections/{name}/retire", "POST"),
        ("/v1/aliases", "GET"),
        ("/v1/keys", "POST"),
        ("/v1/collections/{name}", "GET"),
        ("/v1/collections/{name}", "PATCH"),
        ("/v1/collections/{name}/vectors", "POST"),
        ("/v1/collections/{name}/records", "POST"),
        ("/v1/embeddings", "POST"),
    }
    for path, method in served:
        summary = openapi["paths"][path][method.lower()].get("summary", "")
        assert "single node only" not in summary, (path, method)
    with TestClient(app, base_url="http://localhost") as client:
        r = client.get("/v1/audit")
        assert r.status_code == 501
        assert "cluster mode" in r.json()["error"]["message"]
        for path in ("/v1/collections/x/stats", "/dashboard"):
            assert client.get(path).status_code == 501


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
