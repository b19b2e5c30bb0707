"""Document metadata is bounded in size and depth at ingest (422 naming the limit)."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Server, server_env


def test_metadata_size_and_depth_are_bounded(make_server: Callable[..., Server]) -> None:
    env = server_env(
        EMBEDSTACK_DEFAULT_MODEL="hashing-test",
        EMBEDSTACK_MAX_METADATA_BYTES="1000",
        EMBEDSTACK_MAX_METADATA_DEPTH="4",
    )
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(4):
        deep = {"n": deep}
    with make_server(env).client() as c:
        assert c.post("/v1/collections", json={"name": "m"}).status_code == 201
        path = "/v1/collections/m/documents"
        r = c.post(path, json={"documents": [{"id": "a", "text": "t", "metadata": deep}]})
        assert r.status_code == 422 and "limit of 4" in r.json()["error"]["message"], r.text
        big = {"b": "x" * 2000}
        r = c.post(path, json={"documents": [{"id": "a", "text": "t", "metadata": big}]})
        assert r.status_code == 422 and "limit of 1000 bytes" in r.json()["error"]["message"]
        ok = {"n": {"n": {"n": {"leaf": 1}}}, "b": "x" * 500}
        r = c.post(path, json={"documents": [{"id": "a", "text": "t", "metadata": ok}]})
        assert r.status_code == 202, r.text
