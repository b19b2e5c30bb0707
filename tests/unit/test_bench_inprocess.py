"""bench/inprocess.py, the write path's baseline: the server's engine built from the server's
environment, chunk texts grouped as a server worker submits them, embedded through the batcher."""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

import pytest

from embedstack.config import Settings
from embedstack.serving.services import worker_config
from embedstack.types import ChunkingSpec

BENCH = Path(__file__).resolve().parents[2] / "bench"


def bench_module(name: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module(name)


def test_worker_config_follows_the_settings() -> None:
    cfg = worker_config(Settings(ingest_batch_documents=7, max_pending_bulk=10))
    assert (cfg.batch_documents, cfg.embed_batch) == (7, 5)
    assert worker_config(Settings()).embed_batch == 128


def test_engine_like_server_groups_and_embeds(monkeypatch: pytest.MonkeyPatch) -> None:
    inprocess = bench_module("inprocess", monkeypatch)
    env = {
        "EMBEDSTACK_ENABLE_TEST_MODELS": "1",
        "EMBEDSTACK_DEFAULT_MODEL": "hashing-test",
        "EMBEDSTACK_INGEST_BATCH_DOCUMENTS": "2",
        "EMBEDSTACK_MAX_PENDING_BULK": "6",  # the worker embeds 3 texts per call
        "EMBEDSTACK_LOG_LEVEL": "warning",
    }
    before = dict(os.environ)
    engine = inprocess.Engine.like_server(env)
    try:
        assert dict(os.environ) == before  # the server's environment was only borrowed
        assert engine.settings.ingest_batch_documents == 2
        assert engine.embedder.spec.name == "hashing-test"
        docs = [
            (f"d{i}", text) for i, text in enumerate(["alpha", "beta", "alpha", "gamma", "delta"])
        ]
        spec = ChunkingSpec(mode="tokens", size=64, overlap=8)
        seen = {"delta"}  # embedded before: reused by the worker, not embedded again
        groups = engine.worker_groups(docs, spec, 4, seen)
        # POSTs of 4 documents, 2 documents per worker group; repeats left out
        assert groups == [["alpha", "beta"], ["gamma"], []]
        assert seen == {"alpha", "beta", "gamma", "delta"}
        wall, forward, cpu = engine.seconds(groups)
        assert 0 < forward <= wall
        assert cpu > 0
    finally:
        engine.close()
