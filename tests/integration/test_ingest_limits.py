"""Acknowledged documents are indexed even when they are bigger than the batcher admits at once."""

from __future__ import annotations

from collections.abc import Callable

from tests.conftest import Server, server_env, wait_job


def test_documents_larger_than_the_bulk_lane_are_indexed(
    make_server: Callable[..., Server],
) -> None:
    env = server_env(
        EMBEDSTACK_DEFAULT_MODEL="hashing-test",
        EMBEDSTACK_MAX_PENDING_BULK="16",
        EMBEDSTACK_MAX_ATTEMPTS="2",
    )
    with make_server(env).client() as c:
        r = c.post("/v1/collections", json={"name": "big", "chunking": {"size": 16, "overlap": 0}})
        assert r.status_code == 201, r.text
        text = " ".join(f"w{i}" for i in range(3000))  # hundreds of chunks per document
        docs = [{"id": f"d{i}", "text": f"{i} {text}"} for i in range(3)]
        job = c.post("/v1/collections/big/documents", json={"documents": docs}).json()
        done = wait_job(c, job["job_id"], timeout=120)
        assert done["status"] == "done", done
        assert c.get("/v1/collections/big").json()["documents_pending"] == 0
