"""Drift on the real bundled model (all-MiniLM-L6-v2): queries from the pydoc corpus the
collection holds set the baseline; more of them raise no alarm; kitchen recipes (another
corpus) do. Feedback works on its answers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import Server, server_env, wait_job
from tests.integration.test_quality import WINDOW, ask, drift_of
from tests.quality_data import corpus, pydoc_sentences, recipe_sentences

PINNED = '{"all-MiniLM-L6-v2": "onnx-fp32"}'  # gated at startup, not raced in the background


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(
        EMBEDSTACK_MODEL_BACKENDS=PINNED,
        EMBEDSTACK_DRIFT_BASELINE_QUERIES=str(WINDOW),
        EMBEDSTACK_DRIFT_WINDOW_QUERIES=str(WINDOW),
    )
    server = Server(tmp_path_factory.mktemp("real-quality") / "data", env).start(timeout=300)
    with server.client(timeout=300) as c:
        assert c.post("/v1/collections", json={"name": "docs"}).status_code == 201
        job = c.post("/v1/collections/docs/documents", json={"documents": corpus()}).json()
        assert wait_job(c, job["job_id"])["status"] == "done"
    yield server
    server.stop()


def test_drift_on_the_real_model(real_server: Server) -> None:
    sentences = pydoc_sentences(seed=3)
    with real_server.client(timeout=60) as c:
        answers = ask(c, sentences[:WINDOW])
        ask(c, sentences[WINDOW : 2 * WINDOW])
        same = drift_of(c)
        assert same["state"] == "ok" and not same["alert"], same
        ask(c, recipe_sentences(WINDOW, seed=3))
        shifted = drift_of(c)
        assert shifted["alert"], shifted
        # the recipes match nothing in the Python docs: lower top-1 scores, further from the centroid
        assert shifted["psi"]["top1_score"] > 0.25 and shifted["psi"]["centroid_cosine"] > 0.25
        first = answers[0]
        doc = first["hits"][0]["document_id"]
        r = c.post("/v1/feedback", json={"query_id": first["query_id"], "document_id": doc})
        assert r.status_code == 200 and r.json()["rank"] == 1
