"""The remote backend: batching, retries, timeouts, errors; and a real OpenAI-compatible server."""

from __future__ import annotations

import json

import httpx
import numpy as np
import pytest

from embedstack.errors import InvalidInput, Unavailable
from embedstack.inference.engines.hashing import HashingEmbedder
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.inference.engines.remote import RemoteConfig, RemoteEmbedder
from embedstack.inference.models.bundled import l6_tokenizer_json
from tests.conftest import Server


def _tok() -> HFTokenizer:
    return HFTokenizer(l6_tokenizer_json(), 256)


def _vectors(request: httpx.Request, dim: int = 3) -> httpx.Response:
    texts = json.loads(request.content)["input"]
    data = [{"index": i, "embedding": [float(len(t)), float(i), 1.0][:dim]} for i, t in enumerate(texts)]  # fmt: skip
    return httpx.Response(200, json={"data": list(reversed(data))})  # any order: sorted by index


def test_batches_retries_and_normalizes() -> None:
    calls: list[int] = []
    sleeps: list[float] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(len(json.loads(request.content)["input"]))
        if len(calls) <= 2:
            return httpx.Response(503, headers={"retry-after": "0.5"}, text="busy")
        return _vectors(request)

    cfg = RemoteConfig("r", "http://up.invalid/v1", "m", dim=3, batch_size=3, backoff_s=0.01)
    emb = RemoteEmbedder(cfg, _tok(), httpx.MockTransport(handler), sleeps.append)
    texts = ["a", "bb", "ccc", "dddd", "eeeee", "f", "gg"]
    out = emb.embed_batch(texts)
    assert calls == [3, 3, 3, 3, 1] and len(sleeps) == 2 and min(sleeps) >= 0.5
    want = np.array([[len(t), i % 3, 1.0] for i, t in enumerate(texts)], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert emb.spec.precision == "remote" and emb.spec.dim == 3


def test_timeouts_exhaust_retries_into_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    sleeps: list[float] = []
    cfg = RemoteConfig("r", "http://up.invalid/v1", "m", dim=3, max_retries=2, timeout_s=0.1)
    emb = RemoteEmbedder(cfg, _tok(), httpx.MockTransport(handler), sleeps.append)
    with pytest.raises(Unavailable, match="failed 3 times: timed out"):
        emb.embed_batch(["x"])
    # exponential backoff with jitter: 0.25 s x 2^attempt x [0.5, 1.5)
    assert len(sleeps) == 2 and 0.125 <= sleeps[0] < 0.375 and 0.25 <= sleeps[1] < 0.75


def test_client_errors_are_not_retried_and_dim_is_probed() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(json.loads(request.content)["input"][0])
        if seen[-1] == "bad":
            return httpx.Response(400, json={"error": "too long"})
        return _vectors(request, dim=2)

    emb = RemoteEmbedder(RemoteConfig("r", "http://up.invalid/v1", "m"), _tok(), httpx.MockTransport(handler))  # fmt: skip
    assert emb.spec.dim == 2  # probed with one request
    with pytest.raises(InvalidInput, match="HTTP 400"):
        emb.embed_batch(["bad"])
    assert seen == ["dimension probe", "bad"]


@pytest.mark.slow
def test_against_a_real_openai_compatible_server(hashing_server: Server) -> None:
    cfg = RemoteConfig("remote-hashing", f"{hashing_server.url}/v1", "hashing-test", batch_size=5)
    emb = RemoteEmbedder(cfg, _tok())
    texts = [f"document number {i} about {w}" for i, w in enumerate("abcdefghijkl")]
    got = emb.embed_batch(texts)
    np.testing.assert_allclose(got, HashingEmbedder().embed_batch(texts), atol=1e-6)
    assert emb.spec.dim == 384
    emb.close()
