"""An IVF collection trains once it is large enough and keeps answering correctly as it grows
past its training size (the manager retrains it then)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tests.conftest import Server, server_env, wait_job


def test_ivf_collection_trains_and_grows(make_server: Callable[..., Server]) -> None:
    server = make_server(server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test"))
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(40, 16))
    vecs = centers[rng.integers(0, 40, 6000)] + 0.05 * rng.normal(size=(6000, 16))
    with server.client() as c:
        body = {"name": "v", "dim": 16, "metric": "l2", "index": {"type": "ivf_flat"}}
        assert c.post("/v1/collections", json=body).status_code == 201
        for start in range(0, 6000, 1000):
            docs = [{"id": f"x{i}", "vector": vecs[i].tolist()} for i in range(start, start + 1000)]
            job = c.post("/v1/collections/v/documents", json={"documents": docs}).json()
            assert wait_job(c, job["job_id"])["status"] == "done"
        assert c.get("/v1/collections/v").json()["vectors"] == 6000
        found = 0
        for i in range(0, 6000, 300):
            hit = c.post(
                "/v1/collections/v/query", json={"vector": vecs[i].tolist(), "k": 1}
            ).json()
            found += hit["hits"][0]["document_id"] == f"x{i}"
        assert found >= 18  # of 20: IVF is approximate, but a point finds itself
