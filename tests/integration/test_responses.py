"""Every route declares its response model, and what the server sends conforms to it."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from pydantic import BaseModel

from embedstack.serving import responses
from tests.conftest import Server, undeclared_routes, wait_job


def _declared(openapi: dict[str, Any], method: str, path: str, status: int) -> str:
    """The schema name the OpenAPI document declares for a route's answer with `status`."""
    answer = openapi["paths"][path][method]["responses"][str(status)]
    ref = answer["content"]["application/json"]["schema"]["$ref"]
    return str(ref.rsplit("/", 1)[1])


def _conforms(
    openapi: dict[str, Any], method: str, path: str, r: httpx.Response, status: int
) -> dict[str, Any]:
    assert r.status_code == status, r.text
    model: type[BaseModel] = getattr(responses, _declared(openapi, method, path, status))
    model.model_validate(r.json(), strict=False)
    return dict(r.json())


def test_every_route_declares_a_response_model(hashing_server: Server) -> None:
    openapi = hashing_server.client().get("/openapi.json").json()
    missing = undeclared_routes(openapi)
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            if path != "/healthz" and "422" in op["responses"] and path.startswith("/v1"):
                ref = op["responses"]["422"]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorOut"), f"{method} {path} documents another 422"
    assert not missing, f"routes without a declared response model: {missing}"


@pytest.fixture(scope="module")
def api(hashing_server: Server) -> tuple[httpx.Client, dict[str, Any]]:
    c = hashing_server.client()
    return c, c.get("/openapi.json").json()


def test_answers_conform_to_their_declared_models(api: tuple[httpx.Client, dict[str, Any]]) -> None:
    c, spec = api
    coll = "/v1/collections/{name}"
    _conforms(spec, "get", "/healthz", c.get("/healthz"), 200)
    _conforms(spec, "get", "/readyz", c.get("/readyz"), 200)
    _conforms(spec, "get", "/v1/models", c.get("/v1/models"), 200)
    body = {"input": ["a b", "c"], "encoding_format": "base64"}
    _conforms(spec, "post", "/v1/embeddings", c.post("/v1/embeddings", json=body), 200)
    _conforms(spec, "post", "/v1/embeddings", c.post("/v1/embeddings", json={"input": "x"}), 200)
    made = c.post("/v1/collections", json={"name": "typed"})
    _conforms(spec, "post", "/v1/collections", made, 201)
    docs = {"documents": [{"id": "d1", "text": "hello there", "metadata": {"n": 1}}]}
    job = _conforms(
        spec, "post", coll + "/documents", c.post("/v1/collections/typed/documents", json=docs), 202
    )
    wait_job(c, job["job_id"])
    _conforms(spec, "get", "/v1/jobs/{job_id}", c.get(f"/v1/jobs/{job['job_id']}"), 200)
    doc = c.get("/v1/collections/typed/documents/d1")
    assert _conforms(spec, "get", coll + "/documents/{doc_id}", doc, 200)["metadata"] == {"n": 1}
    assert c.get("/v1/collections/typed/documents/nope").status_code == 404
    _conforms(spec, "get", "/v1/collections", c.get("/v1/collections"), 200)
    _conforms(spec, "get", coll, c.get("/v1/collections/typed"), 200)
    hits = c.post("/v1/collections/typed/query", json={"text": "hello", "k": 3})
    assert _conforms(spec, "post", coll + "/query", hits, 200)["hits"]
    patch = c.patch("/v1/collections/typed", json={"index": {"type": "flat"}})
    _conforms(spec, "patch", coll, patch, 202)
    alias = c.post("/v1/aliases", json={"alias": "typed-a", "collection": "typed"})
    _conforms(spec, "post", "/v1/aliases", alias, 200)
    _conforms(spec, "get", "/v1/aliases", c.get("/v1/aliases"), 200)
    _conforms(spec, "delete", "/v1/aliases/{alias}", c.delete("/v1/aliases/typed-a"), 200)
    gone = c.delete("/v1/collections/typed/documents/d1")
    _conforms(spec, "delete", coll + "/documents/{doc_id}", gone, 200)
    missing = c.get("/v1/collections/nope")
    assert missing.status_code == 404
    responses.ErrorOut.model_validate(missing.json())
    _conforms(spec, "delete", coll, c.delete("/v1/collections/typed"), 200)


def test_posts_whose_fields_are_all_optional_accept_no_body(
    api: tuple[httpx.Client, dict[str, Any]],
) -> None:
    c, _ = api
    assert c.post("/v1/collections", json={"name": "nobody"}).status_code == 201
    for route in ("upgrade/cutover", "retire"):
        r = c.post(f"/v1/collections/nobody/{route}")  # no body at all
        # no upgrade and nothing retained: a 404/409 that says so, never "body: Field required"
        assert r.status_code in (404, 409), r.text
        assert "Field required" not in r.text
    assert c.post("/v1/collections/nobody/rollback").status_code in (404, 409)
