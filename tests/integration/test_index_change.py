"""Changing a collection's index settings rebuilds in the background without a failed query."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tests.conftest import Server, server_env, wait_job
from tests.integration.test_upgrade import Prober, _doc


def test_patch_index_swaps_without_failed_queries(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    server = make_server(server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test"))
    docs = [_doc(i) for i in range(2000)]
    with server.client() as c:
        assert (
            c.post("/v1/collections", json={"name": "kb", "index": {"type": "flat"}}).status_code
            == 201
        )
        for start in range(0, len(docs), 1000):
            job = c.post(
                "/v1/collections/kb/documents", json={"documents": docs[start : start + 1000]}
            ).json()
            assert wait_job(c, job["job_id"])["status"] == "done"
        assert (
            c.post("/v1/aliases", json={"alias": "alias-kb", "collection": "kb"}).status_code == 200
        )
        probers = [Prober(server.url, docs) for _ in range(2)]
        for p in probers:
            p.start()
        r = c.patch(
            "/v1/collections/kb", json={"index": {"type": "hnsw", "M": 16, "ef_search": 128}}
        )
        assert r.status_code == 202 and r.json()["rebuilding"] is True
        assert c.patch("/v1/collections/kb", json={"index": {"type": "nope"}}).status_code == 422
        # a quantized index must reach its recall floor on this collection's data
        r = c.patch("/v1/collections/kb", json={"index": {"type": "sq8", "recall_floor": 0.99999}})
        assert r.status_code in (202, 422), r.text
        if r.status_code == 422:
            assert "recall" in r.json()["error"]["message"]
        time.sleep(0.2)
        r = c.patch(
            "/v1/collections/kb", json={"index": {"type": "hnsw", "M": 16, "ef_search": 128}}
        )
        assert r.status_code == 202
        deadline = time.monotonic() + 120
        while c.get("/v1/collections/kb").json()["rebuilding"] and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        for p in probers:
            p.stop.set()
            p.join(timeout=30)
        assert [e for p in probers for e in p.errors] == []
        assert sum(p.count for p in probers) > 20
        described = c.get("/v1/collections/kb").json()
        assert described["index"] == {
            "type": "hnsw",
            "params": {"M": 16, "ef_construction": 100, "ef_search": 128},
        }
        assert described["vectors"] == 2000 and not described["rebuilding"]
    server.stop()
    server.start()  # the new settings and their snapshot survive a restart
    with server.client() as c:
        assert c.get("/v1/collections/kb").json()["index"]["type"] == "hnsw"
        hit = c.post("/v1/collections/kb/query", json={"text": docs[7]["text"], "k": 1}).json()
        assert hit["hits"][0]["document_id"] == "d7"
    server.stop()
