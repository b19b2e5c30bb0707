"""The user-facing paths on the real bundled all-MiniLM-L6-v2 model, over real HTTP."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedstack.testing import EMBEDSTACK
from tests.conftest import DATA, Server, load_jsonl, server_env, wait_job

PINNED = '{"all-MiniLM-L6-v2": "onnx-fp32"}'  # gated at startup, not raced in the background


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(EMBEDSTACK_MODEL_BACKENDS=PINNED)
    server = Server(tmp_path_factory.mktemp("real") / "data", env).start(timeout=300)
    yield server
    server.stop()


def test_the_serving_backend_is_reported(real_server: Server) -> None:
    c = real_server.client()
    ready = c.get("/readyz").json()
    assert ready["backends"]["all-MiniLM-L6-v2"] == "pinned:onnx-fp32"
    models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert models["all-MiniLM-L6-v2"]["backend"] == "pinned:onnx-fp32"
    assert "backend" not in models["all-MiniLM-L6-v2@openvino-fp32"]  # listed, not loaded


def test_a_pin_the_machine_cannot_run_stops_the_server_with_the_choices(
    tmp_path: Path,
) -> None:
    env = server_env(EMBEDSTACK_MODEL_BACKENDS='{"all-MiniLM-L6-v2": "tpu-int4"}')
    cmd = [*EMBEDSTACK, "serve", "--port", "0", "--data-dir", str(tmp_path / "data")]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "tpu-int4" in out.stderr and "choose one of: auto" in out.stderr


@pytest.fixture(scope="module")
def tutorial() -> list[dict[str, object]]:
    docs = load_jsonl(DATA / "pydoc_sections.jsonl")
    return [d for d in docs if str(d["metadata"]["file"]).startswith("tutorial/")]  # type: ignore[index]


@pytest.fixture(scope="module")
def ingested(real_server: Server, tutorial: list[dict[str, object]]) -> httpx.Client:
    c = real_server.client()
    r = c.post(
        "/v1/collections",
        json={"name": "pydoc", "chunking": {"mode": "sentences", "size": 128, "overlap": 16}},
    )
    assert r.status_code == 201, r.text
    assert r.json()["model"] == "all-MiniLM-L6-v2" and r.json()["metric"] == "cosine"
    job = c.post("/v1/collections/pydoc/documents", json={"documents": tutorial}).json()
    done = wait_job(c, job["job_id"], timeout=600)
    assert done["status"] == "done", done
    return c


def test_ingest_then_query_finds_sections_by_title(
    ingested: httpx.Client, tutorial: list[dict[str, object]]
) -> None:
    described = ingested.get("/v1/collections/pydoc").json()
    assert described["documents"] == len(tutorial)
    assert described["vectors"] == described["chunks"] > len(tutorial)
    found = 0
    for doc in tutorial:
        title = str(doc["metadata"]["title"])  # type: ignore[index]
        r = ingested.post(
            "/v1/collections/pydoc/query", json={"text": title, "k": 10, "group_by": "document"}
        )
        assert r.status_code == 200
        hits = r.json()["hits"]
        assert len({h["document_id"] for h in hits}) == len(hits)  # grouped: one hit per document
        found += doc["id"] in [h["document_id"] for h in hits]
    # section title -> its own section in the top 10 documents: a real semantic model does this
    assert found / len(tutorial) >= 0.6, found


def test_hybrid_finds_identifiers_and_titles_that_dense_misses(ingested: httpx.Client) -> None:
    """Known-item queries over the tutorial (the bundled label sets): exact identifiers and
    section titles. Hybrid (the default mode) finds some the dense model ranks out of the top
    10, and loses none overall."""
    labels = [
        row
        for name in ("pydoc_identifier_labels.jsonl", "pydoc_title_labels.jsonl")
        for row in load_jsonl(DATA / name)
        if all(str(doc).startswith("tutorial/") for doc in row["relevant"])  # type: ignore[attr-defined]
    ][::3]
    found = {"dense": 0, "hybrid": 0}
    rescued: list[str] = []
    for row in labels:
        hit = {}
        for mode in found:
            body = {"text": row["query"], "k": 10, "group_by": "document", "mode": mode}
            r = ingested.post("/v1/collections/pydoc/query", json=body)
            assert r.status_code == 200, r.text
            hit[mode] = bool(set(row["relevant"]) & {h["document_id"] for h in r.json()["hits"]})  # type: ignore[arg-type]
            found[mode] += hit[mode]
        if hit["hybrid"] and not hit["dense"]:
            rescued.append(str(row["query"]))
    assert rescued, found
    assert found["hybrid"] > found["dense"], (found, rescued)


def test_query_with_filter_and_known_answer(ingested: httpx.Client) -> None:
    r = ingested.post(
        "/v1/collections/pydoc/query",
        json={"text": "how do I catch an exception with try and except?", "k": 5,
              "filter": {"file": {"$in": ["tutorial/errors.rst.txt"]}}},
    )  # fmt: skip
    hits = r.json()["hits"]
    assert hits and all(h["metadata"]["file"] == "tutorial/errors.rst.txt" for h in hits)
    assert any("except" in h["text"] for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True) and 0 < scores[0] <= 1.0001


def test_openai_client_round_trip(real_server: Server) -> None:
    openai = pytest.importorskip("openai")
    from sentence_transformers import SentenceTransformer

    from embedstack.inference.models.bundled import L6

    client = openai.OpenAI(base_url=f"{real_server.url}/v1", api_key="unused")
    texts = ["The quick brown fox.", "Vector databases store embeddings."]
    got = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # base64 by default
    floats = client.embeddings.create(
        model="all-MiniLM-L6-v2", input=texts, encoding_format="float"
    )
    ours = np.array([d.embedding for d in got.data], dtype=np.float32)
    ours_float = np.array([d.embedding for d in floats.data], dtype=np.float32)
    reference = SentenceTransformer(str(L6.folder()), device="cpu").encode(
        texts, normalize_embeddings=True
    )
    assert ours.shape == (2, 384) and got.model == "all-MiniLM-L6-v2"
    assert np.allclose(ours, ours_float, atol=1e-6)
    assert np.min(np.sum(ours * reference, axis=1)) > 0.999  # the gate's bar is 0.99
    assert got.usage.prompt_tokens > 0 and got.usage.total_tokens == got.usage.prompt_tokens
    single = client.embeddings.create(model="all-MiniLM-L6-v2", input="just one")
    assert len(single.data) == 1 and single.data[0].index == 0


def test_the_second_bundled_model_gets_chunking_defaults_from_its_limit(
    real_server: Server,
) -> None:
    c = real_server.client()
    r = c.post("/v1/collections", json={"name": "kb-l3", "model": "paraphrase-MiniLM-L3-v2"})
    assert r.status_code == 201, r.text
    assert r.json()["chunking"] == {"mode": "tokens", "size": 128, "overlap": 16}
    r = c.post(
        "/v1/collections",
        json={"name": "kb-l3-s", "model": "paraphrase-MiniLM-L3-v2", "chunking": {"size": 64}},
    )
    assert r.status_code == 201 and r.json()["chunking"]["overlap"] == 8, r.text
    r = c.post(
        "/v1/collections",
        json={"name": "kb-l3-big", "model": "paraphrase-MiniLM-L3-v2", "chunking": {"size": 200}},
    )
    assert r.status_code == 422 and "model limit of 128" in r.json()["error"]["message"]
    assert c.get("/v1/collections/kb-l3-big").status_code == 404  # nothing left behind
    r = c.post("/v1/collections", json={"name": "kb-l6"})  # the default model keeps 256/32
    assert r.json()["chunking"] == {"mode": "tokens", "size": 256, "overlap": 32}
