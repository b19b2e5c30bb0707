"""ONNX Runtime backends on real text: the exported all-MiniLM-L6-v2 and the packaged L3 graph."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import orjson
import pytest

from embedstack.inference.batching.packed import PackedEmbedder
from embedstack.inference.engines.onnx import onnx_embedder
from embedstack.inference.models.bundled import L3, L6, bundled_spec
from embedstack.inference.models.export import EXPORT_OUTPUT, exported_model
from embedstack.inference.models.variants import sentence_transformer

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1] / "data" / "pydoc_sections.jsonl"


def paragraphs(n: int) -> list[str]:
    out = []
    for line in DATA.read_bytes().splitlines():
        for p in re.split(r"\n\s*\n", orjson.loads(line)["text"]):
            if len(p.split()) >= 5:
                out.append(" ".join(p.split()))
    return out[:: len(out) // n][:n]


@pytest.fixture(scope="module")
def l6_onnx(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, PackedEmbedder]:
    # one export per test session: every module uses the same cache folder under the base temp
    cache = tmp_path_factory.getbasetemp() / "embedstack-cache"
    path = exported_model(L6.folder(), bundled_spec(L6).fingerprint, cache)
    return path, onnx_embedder(
        bundled_spec(L6), path, L6.tokenizer_json(), EXPORT_OUTPUT, "onnx-fp32"
    )


def test_export_is_cached_by_fingerprint(l6_onnx: tuple[Path, PackedEmbedder]) -> None:
    path, _ = l6_onnx
    assert path.parent.name == bundled_spec(L6).fingerprint and path.stat().st_size > 80_000_000
    before = path.stat().st_mtime_ns
    again = exported_model(L6.folder(), bundled_spec(L6).fingerprint, path.parents[2])
    assert again == path and path.stat().st_mtime_ns == before  # not exported twice
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_onnx_fp32_matches_sentence_transformers_on_real_text(
    l6_onnx: tuple[Path, PackedEmbedder],
) -> None:
    _, onnx = l6_onnx
    texts = paragraphs(48)
    reference = sentence_transformer()
    assert onnx.spec == reference.spec  # same fp32 space id: fp32 backends are one space
    ref = reference.embed_batch(texts)
    got = onnx.embed_batch(texts)
    cos = np.sum(ref * got, axis=1)
    assert cos.min() > 0.99999, cos.min()
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    # batch composition does not change a text's vector (padding is masked out)
    alone = np.concatenate([onnx.embed_batch([t]) for t in texts[:6]])
    np.testing.assert_allclose(alone, got[:6], atol=2e-5)
    # token ids from the batcher (tokenized at admission) give the same vectors
    pre = onnx.embed_batch(texts, onnx.tokenizer.encode_packed(texts))
    np.testing.assert_allclose(pre, got, atol=1e-6)


def test_l3_onnx_model_is_its_own_normalized_space() -> None:
    spec = bundled_spec(L3)
    emb = onnx_embedder(spec, L3.weights_path(), L6.tokenizer_json(), L3.output, "onnx-fp32")
    texts = [*paragraphs(24), "x " * 400]
    out = emb.embed_batch(texts)
    assert out.shape == (25, 384) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    assert spec.max_tokens == 128 and spec.space_id != bundled_spec(L6).space_id
    # related texts are closer than unrelated ones: a real model, not noise
    a, b, c = emb.embed_batch(["How do I open a file?", "Reading files in Python", "banana bread"])
    assert a @ b > a @ c + 0.2
