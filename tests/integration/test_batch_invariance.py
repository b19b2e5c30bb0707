"""The same text, the same vector: through `POST /v1/embeddings` on every engine `auto` can choose.

Each engine is pinned in its own real server (EMBEDSTACK_MODEL_BACKENDS); "hello world" (and its
companions) embedded alone must match the same text inside a request with texts of other
lengths, within the gate's bound. An engine the gate refuses may not serve at all (the server
refuses to start with the numbers), so `auto` can never choose it either.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import numpy as np
import pytest

from embedstack.inference.models.bundled import L6
from embedstack.inference.models.catalog import Catalog
from embedstack.inference.models.invariance import MIN_BATCH_COSINE
from tests.conftest import Server, server_env

pytestmark = pytest.mark.slow
os.environ.setdefault("HF_HUB_OFFLINE", "1")

STARTUP_S = 900  # the server gates its pinned engine before it is ready (minutes on busy cores)
GATE_QUERIES = 15  # the servers gate on 15 sample titles + their paragraphs (seconds, not minutes)
HELLO = "hello world"
OTHERS = [
    "How do I open a file for reading and iterate over its lines without loading it all?",
    "The with statement wraps the execution of a block with methods defined by a context "
    "manager. This allows common try, except and finally usage patterns to be encapsulated "
    "for convenient reuse, and it is the usual way to make sure that a file is closed.",
]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A HOME of its own whose ~/.cache/embedstack (gate reports, ONNX exports) is the session's
    shared cache (tests/integration/test_models_catalog.py), exported here once so that each
    server only loads and gates."""
    home = tmp_path_factory.mktemp("home")
    cache = tmp_path_factory.getbasetemp() / "embedstack-cache"
    cache.mkdir(exist_ok=True)
    (home / ".cache").mkdir()
    (home / ".cache" / "embedstack").symlink_to(cache)
    catalog = Catalog(cache)
    for v in catalog.variants(L6.name):
        if v.auto and v.backend.startswith("onnx-"):
            v.build()
    return home


def _embed(server: Server, texts: list[str]) -> np.ndarray:
    with server.client(timeout=300) as client:
        r = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"})
    assert r.status_code == 200, r.text
    raw = [base64.b64decode(d["embedding"]) for d in r.json()["data"]]
    return np.stack([np.frombuffer(b, dtype="<f4") for b in raw])


@pytest.mark.timeout(3600)  # one server per engine, each gating on startup
def test_a_text_alone_and_batched_gets_the_same_vector_on_every_auto_engine(
    home: Path, tmp_path: Path
) -> None:
    variants = Catalog(home / ".cache" / "embedstack").variants(L6.name)
    candidates = [v.backend for v in variants if v.auto]
    served, refused, failures = [], [], []
    for backend in candidates:
        env = server_env(
            HOME=str(home),
            EMBEDSTACK_MODEL_BACKENDS=json.dumps({L6.name: backend}),
            EMBEDSTACK_GATE_QUERIES=str(GATE_QUERIES),
        )
        (tmp_path / backend).mkdir()
        server = Server(tmp_path / backend / "data", env)
        try:
            server.start(timeout=STARTUP_S)
        except RuntimeError as exc:  # refused at startup: it may not serve, so auto never picks it
            assert "accuracy gate" in str(exc), (backend, str(exc)[-2000:])
            refused.append(backend)
            continue
        try:
            served.append(backend)
            batch = [OTHERS[0], HELLO, OTHERS[1]]
            together = _embed(server, batch)
            alone = np.vstack([_embed(server, [t]) for t in batch])
            cos = np.sum(together * alone, axis=1) / (
                np.linalg.norm(together, axis=1) * np.linalg.norm(alone, axis=1)
            )
            if float(cos.min()) < MIN_BATCH_COSINE:
                failures.append(f"{backend}: alone vs batched cosine {cos.tolist()}")
        finally:
            server.stop(kill=True)
    assert not failures, failures
    # the fp32 engines always serve; the bound is not met by refusing everything
    assert {"sentence-transformers", "onnx-fp32"} <= set(served), (served, refused)
