"""Remote models: the engine (batching, retries, timeouts, errors, probe-vector space, redaction)
against a mock transport; then configured in Settings and served against a real
OpenAI-compatible server (a second `embedstack serve` on loopback)."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import pytest

from embedstack.config import Settings
from embedstack.errors import ConfigError, InvalidInput, Unavailable
from embedstack.inference.engines.hashing import HashingEmbedder
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.inference.engines.remote import (
    PROBE_TEXTS,
    RemoteConfig,
    RemoteEmbedder,
    probe_fingerprint,
)
from embedstack.inference.models.bundled import L6
from embedstack.inference.vectors import normalize_rows
from embedstack.serving.services import remote_configs
from embedstack.testing import EMBEDSTACK, free_port
from embedstack.types import ModelSpec
from tests.conftest import Server, server_env, wait_job


def _tok() -> HFTokenizer:
    return HFTokenizer(L6.tokenizer_json(), 256)


def _vectors(request: httpx.Request, dim: int = 3, salt: float = 1.0) -> httpx.Response:
    texts = json.loads(request.content)["input"]
    data = [{"index": i, "embedding": [float(len(t)), float(i), salt][:dim]} for i, t in enumerate(texts)]  # fmt: skip
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
    # the probe texts at load (refused twice, then answered), then 7 texts in batches of 3
    assert calls == [3, 3, 3, 3, 3, 1] and len(sleeps) == 2 and min(sleeps) >= 0.5
    want = np.array([[len(t), i % 3, 1.0] for i, t in enumerate(texts)], dtype=np.float32)
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_allclose(out, want, rtol=1e-6)
    assert emb.spec.precision == "remote" and emb.spec.dim == 3


def test_timeouts_exhaust_retries_into_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow", request=request)

    sleeps: list[float] = []
    cfg = RemoteConfig("r", "http://up.invalid/v1", "m", dim=3, max_retries=2, timeout_s=0.1)
    with pytest.raises(Unavailable, match="failed 3 times: timed out"):
        RemoteEmbedder(cfg, _tok(), httpx.MockTransport(handler), sleeps.append)
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
    assert emb.spec.dim == 2  # from the probe vectors
    with pytest.raises(InvalidInput, match="HTTP 400"):
        emb.embed_batch(["bad"])
    assert seen == [PROBE_TEXTS[0], "bad"]
    with pytest.raises(Unavailable, match="sent 2-d vectors, configured 3"):
        RemoteEmbedder(RemoteConfig("r", "http://up.invalid/v1", "m", dim=3), _tok(), httpx.MockTransport(handler))  # fmt: skip


def test_space_is_the_upstream_model_and_its_probe_vectors() -> None:
    def load(salt: float, name: str = "r", url: str = "http://up.invalid/v1") -> RemoteEmbedder:
        transport = httpx.MockTransport(lambda req: _vectors(req, salt=salt))
        return RemoteEmbedder(RemoteConfig(name, url, "m"), _tok(), transport)

    same = load(1.0)
    assert same.spec.name == "m" and same.spec.fingerprint == probe_fingerprint(
        normalize_rows(np.array([[len(t), i, 1.0] for i, t in enumerate(PROBE_TEXTS)], np.float32))
    )
    # another served name or another address of the same upstream model: the same space
    assert load(1.0, "other", "http://elsewhere.invalid/v2").spec.space_id == same.spec.space_id
    # the upstream model changed (other vectors for the probe texts): another space
    assert load(3.0).spec.space_id != same.spec.space_id


def test_api_key_is_a_bearer_header_and_the_url_is_never_shown() -> None:
    headers: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        headers.append(request.headers.get("authorization", ""))
        if json.loads(request.content)["input"] == ["echo"]:  # an upstream echoing its URL
            return httpx.Response(500, text=f"error at {request.url}")
        return _vectors(request)

    url = "https://api.example.com/v1/?token=hunter2"
    cfg = RemoteConfig("r", url, "m", api_key="sk-123", max_retries=0)
    emb = RemoteEmbedder(cfg, _tok(), httpx.MockTransport(handler))
    assert headers == ["Bearer sk-123"] and "sk-123" not in repr(cfg)
    assert emb.backend == "remote:api.example.com"
    with pytest.raises(Unavailable) as err:
        emb.embed_batch(["echo"])
    assert "hunter2" not in err.value.message and "api.example.com" in err.value.message


def test_settings_name_the_missing_key_variable() -> None:
    settings = Settings(
        remote_models=[
            {
                "name": "oa",
                "base_url": "http://up.invalid/v1",
                "model": "m",
                "api_key_env": "OA_KEY",
            }
        ]
    )
    with pytest.raises(ConfigError, match="environment variable OA_KEY, which is not set"):
        remote_configs(settings, {})
    (cfg,) = remote_configs(settings, {"OA_KEY": "sk-9"})
    assert cfg.api_key == "sk-9" and cfg.name == "oa" and cfg.model == "m"
    assert remote_configs(settings)[0].api_key is None  # listing needs no key
    with pytest.raises(ValueError, match="api_key"):  # a key never goes into the config
        Settings(remote_models=[{"name": "x", "base_url": "u", "model": "m", "api_key": "s"}])


@pytest.mark.slow
def test_remote_model_served_end_to_end(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    upstream = make_server(server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test"), data=tmp_path / "up")  # fmt: skip
    base_url = f"http://user:hunter2@127.0.0.1:{upstream.port}/v1"  # credentials: never shown

    def remotes(model: str) -> str:
        return json.dumps([
            {"name": "remote-hashing", "base_url": base_url, "model": model, "dim": 384,
             "api_key_env": "REMOTE_TEST_KEY", "batch_size": 5},
            {"name": "remote-down", "base_url": f"http://user:hunter2@127.0.0.1:{free_port()}/v1",
             "model": "m", "max_retries": 0, "timeout_s": 2},
        ])  # fmt: skip

    env = server_env(
        EMBEDSTACK_DEFAULT_MODEL="hashing-test", EMBEDSTACK_REMOTE_MODELS=remotes("hashing-test")
    )
    with pytest.raises(
        RuntimeError, match="environment variable REMOTE_TEST_KEY, which is not set"
    ):
        make_server(env, data=tmp_path / "nokey")
    env["REMOTE_TEST_KEY"] = "sk-test"
    server = make_server(env, data=tmp_path / "down")
    c = server.client()

    created = c.post("/v1/collections", json={"name": "docs", "model": "remote-hashing"})
    assert created.status_code == 201, created.text
    # the space: the upstream model name and a fingerprint of its vectors for the probe texts
    with httpx.Client(base_url=upstream.url) as up:
        probe = up.post("/v1/embeddings", json={"input": list(PROBE_TEXTS), "model": "hashing-test"})  # fmt: skip
    rows = np.asarray([d["embedding"] for d in probe.json()["data"]], dtype=np.float32)
    space = c.get("/v1/collections/docs").json()["space_id"]
    listed = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert listed["remote-hashing"]["space_id"] == space
    assert listed["remote-hashing"]["backend"] == f"remote:127.0.0.1:{upstream.port}"
    want_spec = ModelSpec(
        "hashing-test", "1", probe_fingerprint(normalize_rows(rows)), 384, "cosine", 256,
        "remote", True, "bert-base-uncased-wordpiece", "remote",
    )  # fmt: skip
    assert space == want_spec.space_id
    assert space != listed["hashing-test"].get("space_id")

    texts = {f"d{i}": f"document {i} about {w} and {w}s" for i, w in enumerate(["cats", "rust", "tea", "jazz", "maps", "ice", "oak"])}  # fmt: skip
    docs = [{"id": k, "text": v} for k, v in texts.items()]
    job = c.post("/v1/collections/docs/documents", json={"documents": docs}).json()["job_id"]
    assert wait_job(c, job)["status"] == "done"
    hits = c.post("/v1/collections/docs/query", json={"text": texts["d3"], "k": 3}).json()["hits"]
    assert hits[0]["document_id"] == "d3" and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    # the vectors are the upstream model's: the same as embedding there directly
    here = c.post("/v1/embeddings", json={"input": ["tea time"], "model": "remote-hashing"})
    want = HashingEmbedder().embed_batch(["tea time"])[0]
    np.testing.assert_allclose(here.json()["data"][0]["embedding"], want, atol=1e-5)

    down = c.post("/v1/collections", json={"name": "down", "model": "remote-down"})
    assert down.status_code == 503 and "127.0.0.1" in down.text
    shown = [down.text, c.get("/readyz").text, c.get("/v1/models").text]
    assert not any("hunter2" in t or f"{upstream.port}/v1" in t for t in shown), shown

    listing = subprocess.run(
        [*EMBEDSTACK, "models", "list", "--cache-dir", str(tmp_path / "cache")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if ln.startswith("remote-hashing"))
    assert f"remote:127.0.0.1:{upstream.port}" in line and "hunter2" not in listing.stdout

    # the upstream now serves another model under the same name: another space, refused (409)
    server.stop()
    env["EMBEDSTACK_REMOTE_MODELS"] = remotes("hashing-test-b")
    server = make_server(env, data=tmp_path / "down")
    refused = server.client().post("/v1/collections/docs/query", json={"text": "tea", "k": 1})
    assert refused.status_code == 409, refused.text
