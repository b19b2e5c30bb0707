"""The hot path of POST /v1/collections/{name}/query (routes/query.py direct_query): an admitted
query with a small body is answered without FastAPI's router, with the same answers and errors
as the route; a body it cannot validate goes to the route, which answers with FastAPI's 422."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient
from starlette.types import ASGIApp, Receive, Scope, Send

from embedstack.serving.app import create_app
from embedstack.serving.services import Services
from tests.conftest import in_process_settings


class Counted:
    """FastAPI's router, counting the query requests that reach it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.queries = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].endswith("/query"):
            self.queries += 1
        await self.app(scope, receive, send)


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[TestClient, Counted]]:
    services = Services.build(in_process_settings(tmp_path))
    app = create_app(services)
    counted = Counted(app.router.middleware_stack)
    app.router.middleware_stack = counted
    with TestClient(app) as client:
        r = client.post("/v1/collections", json={"name": "c", "model": "hashing-test"})
        assert r.status_code == 201, r.text
        docs = [{"id": f"d{i}", "text": f"word{i} common", "metadata": {"n": i}} for i in range(6)]
        r = client.post("/v1/collections/c/documents", json={"documents": docs})
        assert r.status_code == 202, r.text
        for _ in range(500):
            if client.get(f"/v1/jobs/{r.json()['job_id']}").json()["status"] == "done":
                break
            time.sleep(0.02)
        else:
            raise AssertionError("the documents were not indexed within 10 s")
        yield client, counted


def _query(
    client: TestClient, body: dict[str, Any], name: str = "c", chunked: bool = False
) -> tuple[int, dict[str, Any]]:
    """Status and body of a query (less what differs run to run). `chunked`: the body is sent
    without a Content-Length, which QueryShedder does not read: FastAPI's route answers."""
    raw = json.dumps(body).encode()
    content: Any = iter([raw]) if chunked else raw
    headers = {"content-type": "application/json"}
    r = client.post(f"/v1/collections/{name}/query", content=content, headers=headers)
    out = r.json()
    for key in ("took_ms", "query_id"):
        out.pop(key, None)
    return r.status_code, out.get("error", out)


def test_queries_skip_the_router_with_the_routes_answers(node: tuple[TestClient, Counted]) -> None:
    client, counted = node
    for body in (
        {"text": "word3 common", "k": 3},
        {"text": "word2", "k": 2, "filter": {"n": {"$gte": 2}}, "mode": "dense"},
        {"text": "word1", "k": 4, "group_by": "document"},
    ):
        direct = _query(client, body)
        assert direct[0] == 200 and direct[1]["hits"], direct
        before = counted.queries
        assert _query(client, body, chunked=True) == direct
        assert counted.queries == before + 1
    assert counted.queries == 3  # only the chunked ones reached the router


def test_errors_match_the_route(node: tuple[TestClient, Counted]) -> None:
    client, counted = node
    # answered directly: the domain errors, through the app's one error table, as the route does
    for name, body, status, words in (
        ("c", {"text": "x", "k": 10**6}, 422, "'k'"),
        ("c", {"text": "x", "filter": {"n": {"$bogus": 1}}}, 422, "operator"),
        ("missing", {"text": "x"}, 404, "missing"),
    ):
        direct = _query(client, body, name)
        assert direct[0] == status and words in direct[1]["message"], direct
        assert _query(client, body, name, chunked=True) == direct
    assert counted.queries == 3
    # not valid for the model (including an integer json.loads reads but orjson would make a
    # float of): the route answers with FastAPI's 422
    for body in (
        {"text": "x", "k": "ten"},
        {"text": "x", "surprise": 1},
        {"text": "x", "filter": {"n": 18446744073709551616}},
    ):
        before = counted.queries
        status, out = _query(client, body)
        assert status == 422 and out["message"], out
        assert counted.queries == before + 1
    assert "64-bit" in out["message"]
