"""The `auto` engine choice of the bundled model (gate + speed race, minutes of CPU) waits for the
first texts: a server holding only bring-your-own-vector collections never starts it, and text
still works (on the fp32 reference at once, the choice then runs in the background)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import Server, server_env, wait_job

MODEL = "all-MiniLM-L6-v2"
SELECTION = "embedstack_model_selection_info"


def selection_state(c: httpx.Client) -> str:
    """The model's one `embedstack_model_selection_info` state label on /metrics."""
    states = [
        line.split('state="', 1)[1].split('"', 1)[0]
        for line in c.get("/metrics").text.splitlines()
        if line.startswith(SELECTION + "{") and f'model="{MODEL}"' in line
    ]
    assert len(states) == 1, states
    return states[0]


@pytest.fixture()
def auto_server(tmp_path: Path) -> Iterator[Server]:
    # the default model on `auto` (not pinned), as `make run` serves it
    server = Server(tmp_path / "data", server_env(EMBEDSTACK_DEFAULT_MODEL=MODEL))
    try:
        yield server.start(timeout=300)
    finally:
        server.stop(kill=True)


def test_vector_only_server_never_starts_the_engine_race_and_text_still_works(
    auto_server: Server,
) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(50, 8)).astype(np.float32)
    with auto_server.client() as c:
        before = selection_state(c)  # "cached" only where an earlier race was recorded
        assert before in ("deferred", "cached"), before
        r = c.post("/v1/collections", json={"name": "byo", "dim": 8, "metric": "cosine"})
        assert r.status_code == 201, r.text
        docs = [{"id": f"v{i}", "vector": v.tolist()} for i, v in enumerate(vecs)]
        r = c.post("/v1/collections/byo/documents", json={"documents": docs})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["status"] == "done"
        for i in range(20):
            r = c.post("/v1/collections/byo/query", json={"vector": vecs[i].tolist(), "k": 1})
            assert r.status_code == 200, r.text
            assert r.json()["hits"][0]["document_id"] == f"v{i}"
        assert selection_state(c) == before  # vector work never reached the model
        # a text needs the model: it is answered, and only now does the choice start
        r = c.post("/v1/embeddings", json={"model": MODEL, "input": ["a cat sat on the mat"]})
        assert r.status_code == 200, r.text
        vec = np.asarray(r.json()["data"][0]["embedding"])
        assert vec.shape == (384,) and abs(float(np.linalg.norm(vec)) - 1.0) < 1e-3
        after = selection_state(c)
        assert after == "cached" if before == "cached" else after in ("running", "chosen")
