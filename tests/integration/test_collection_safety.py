"""One collection's bad settings or state never stops the server: a bad request leaves nothing
behind, a start serves every healthy collection and reports the broken one."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx

from embedstack.storage.store import Store
from embedstack.types import CollectionConfig, IndexSpec, byo_space_id
from tests.conftest import Server, server_env, wait_job

ENV = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")


def _message(r: httpx.Response) -> str:
    return str(r.json()["error"]["message"])


def test_a_refused_index_leaves_no_collection_and_the_next_start_works(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    server = make_server(ENV)
    with server.client() as c:
        r = c.post("/v1/collections", json={"name": "b", "index": {"type": "ivf_pq", "m": 7}})
        assert r.status_code == 422, r.text
        assert "m=7" in _message(r) and "dim" in _message(r)
        assert c.get("/v1/collections/b").status_code == 404
        assert c.post("/v1/collections", json={"name": "ok"}).status_code == 201
        r = c.patch("/v1/collections/ok", json={"index": {"type": "ivf_pq", "m": 7}})
        assert r.status_code == 422, r.text
        assert c.get("/v1/collections/ok").json()["index"]["type"] == "hnsw"
    server.stop()
    again = make_server(ENV, data=server.data_dir)
    with again.client() as c:
        assert [x["name"] for x in c.get("/v1/collections").json()["collections"]] == ["ok"]


def test_a_start_serves_the_healthy_collections_and_reports_a_broken_one(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    server = make_server(ENV, data=data)
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "ok"}).status_code == 201
        job = c.post(
            "/v1/collections/ok/documents", json={"documents": [{"id": "d", "text": "hello"}]}
        ).json()
        assert wait_job(c, job["job_id"])["status"] == "done"
    server.stop()
    # a collection stored with settings that cannot open (as an older version could leave it)
    store = Store(data / "store.db")
    bad = CollectionConfig(8, "cosine", IndexSpec("ivf_pq", {"m": 3}))
    store.create_collection("broken", bad, byo_space_id(8, "cosine"))
    store.close()

    again = make_server(ENV, data=data)
    with again.client() as c:
        ready = c.get("/readyz")
        assert ready.status_code == 200, ready.text
        assert "broken" in ready.json()["collections_failed"]
        described = c.get("/v1/collections/broken").json()
        assert described["state"] == "error" and "m=3" in described["error"]
        r = c.post("/v1/collections/broken/query", json={"vector": [1.0] * 8})
        assert r.status_code == 503 and "m=3" in _message(r)
        r = c.post("/v1/collections/ok/query", json={"text": "hello"})
        assert r.status_code == 200 and r.json()["hits"][0]["document_id"] == "d"
        # fixing the settings reopens it
        r = c.patch("/v1/collections/broken", json={"index": {"type": "flat"}})
        assert r.status_code == 202, r.text
        for _ in range(100):
            described = c.get("/v1/collections/broken").json()
            if described["state"] == "ready" and not described["rebuilding"]:
                break
        assert described["state"] == "ready" and described["error"] is None
        assert "broken" not in c.get("/readyz").json()["collections_failed"]
        r = c.post("/v1/collections/broken/query", json={"vector": [1.0] * 8})
        assert r.status_code == 200, r.text
