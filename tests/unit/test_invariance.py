"""Batch invariance in the accuracy gate: an engine that mixes batch statistics is refused."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from embedstack.inference.models.gate import GATE_VERSION, GateCache, GateSample, run_gate
from embedstack.inference.models.invariance import (
    MIN_BATCH_COSINE,
    check_invariance,
    shuffled_calls,
    subsample,
)

DIM = 16


def _sample(n_queries: int = 30, per: int = 2) -> tuple[GateSample, np.ndarray]:
    rng = np.random.default_rng(0)
    centers = rng.standard_normal((n_queries, DIM))
    passages = np.repeat(centers, per, axis=0) + 0.2 * rng.standard_normal((n_queries * per, DIM))
    queries = centers + 0.2 * rng.standard_normal((n_queries, DIM))
    rel = [list(range(i * per, (i + 1) * per)) for i in range(n_queries)]
    # texts of different lengths, as real ones (the fake engines pad to the longest in a call)
    sample = GateSample(
        [f"passage {i} " + "word " * (i % 7) for i in range(len(passages))],
        [f"query {i}" for i in range(n_queries)],
        rel,
    )
    return sample, np.vstack([passages, queries]).astype(np.float32)


class Exact:
    """Each text's vector from a table: batch-invariant and deterministic."""

    def __init__(self, sample: GateSample, vectors: np.ndarray) -> None:
        self.where = {t: i for i, t in enumerate(sample.texts)}
        self.vectors = vectors

    def base(self, texts: Sequence[str]) -> np.ndarray:
        return self.vectors[[self.where[t] for t in texts]].copy()

    def embed_batch(self, texts: Sequence[str], encoded: object = None) -> np.ndarray:
        return self.base(texts)


class DynamicInt8(Exact):
    """Quantizes the batch with one scale over the whole batch tensor, like ONNX Runtime's
    DynamicQuantizeLinear: a text's vector depends on its companions."""

    def embed_batch(self, texts: Sequence[str], encoded: object = None) -> np.ndarray:
        x = self.base(texts)
        scale = np.abs(x).max() / 127.0
        return np.round(x / scale) * scale


class PerRowInt8(Exact):
    """The same quantization with one scale per row: invariant."""

    def embed_batch(self, texts: Sequence[str], encoded: object = None) -> np.ndarray:
        x = self.base(texts)
        scale = np.abs(x).max(axis=1, keepdims=True) / 127.0
        return np.round(x / scale) * scale


class Noisy(Exact):
    """Float-noise-sized differences from call to call: within the bound, not bitwise equal."""

    def __init__(self, sample: GateSample, vectors: np.ndarray) -> None:
        super().__init__(sample, vectors)
        self.rng = np.random.default_rng(1)

    def embed_batch(self, texts: Sequence[str], encoded: object = None) -> np.ndarray:
        x = self.base(texts)
        return x * (1 + 1e-7 * self.rng.standard_normal(x.shape)).astype(np.float32)


def test_the_gate_refuses_an_engine_that_mixes_batch_statistics() -> None:
    sample, vectors = _sample()
    engine = DynamicInt8(sample, vectors)
    # accurate enough on the gate's own batches: only invariance refuses it
    report = run_gate("m", "dyn", (vectors, 1.0), engine, sample)  # type: ignore[arg-type]
    assert not report.passed and not report.batch_invariant
    assert report.batch_min_cosine is not None and report.batch_min_cosine < MIN_BATCH_COSINE
    assert report.mean_cosine >= 0.999
    assert len(report.reasons) == 1 and "batch-dependent" in report.reasons[0]
    assert f"{report.batch_min_cosine:.7f}" in report.summary()
    assert report.deterministic  # the same calls twice still give the same bytes


def test_per_row_scales_and_exact_engines_pass() -> None:
    sample, vectors = _sample()
    for engine in (Exact(sample, vectors), PerRowInt8(sample, vectors)):
        report = run_gate("m", "b", (vectors, 1.0), engine, sample)  # type: ignore[arg-type]
        assert report.passed, report.summary()
        assert report.batch_min_cosine == pytest.approx(1.0, abs=1e-9) and report.deterministic
        assert "bitwise deterministic" in report.summary()


def test_float_noise_passes_but_is_not_bitwise_deterministic() -> None:
    sample, vectors = _sample()
    inv = check_invariance(Noisy(sample, vectors), sample.texts)  # type: ignore[arg-type]
    assert inv.min_cosine >= MIN_BATCH_COSINE and not inv.deterministic
    assert inv.batchings == ("alone", "mixed", "mixed, other sizes")


def test_every_subsampled_text_is_embedded_alone_and_with_others() -> None:
    calls: list[list[str]] = []

    class Recorder(Exact):
        def embed_batch(self, texts: Sequence[str], encoded: object = None) -> np.ndarray:
            calls.append(list(texts))
            return super().embed_batch(texts)

    sample, vectors = _sample(200, 2)
    inv = check_invariance(Recorder(sample, vectors), sample.texts, n=64)  # type: ignore[arg-type]
    assert inv.texts == 64
    alone = [c[0] for c in calls if len(c) == 1]
    assert len(set(alone)) == 64
    sizes = {len(c) for c in calls}
    assert {2, 5, 13, 31} <= sizes  # calls of several sizes, so other companions and padding
    assert sum(len(c) for c in calls) == 64 * 4  # alone, two shuffles, one repeated


def test_subsample_and_calls_cover_everything_once() -> None:
    idx = subsample(1504, 256)
    assert len(idx) == 256 and idx[0] == 0 and idx[-1] == 1503 and len(set(idx)) == 256
    assert list(subsample(10, 256)) == list(range(10))
    calls = shuffled_calls(100, (2, 5, 13), seed=3)
    flat = np.concatenate(calls)
    assert sorted(flat.tolist()) == list(range(100)) and len(calls[0]) == 2
    assert [c.tolist() for c in calls] == [c.tolist() for c in shuffled_calls(100, (2, 5, 13), 3)]


def test_cached_reports_of_the_old_gate_are_not_reused(tmp_path: Path) -> None:
    key = GateCache(tmp_path / "gate.json").key("f" * 64, "b", machine="m")
    assert key.startswith(f"v{GATE_VERSION}|") and GATE_VERSION >= 2


def test_per_token_int8_graph_is_row_independent(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper, numpy_helper

    from embedstack.inference.models.token_int8 import quantize_int8_per_token

    rng = np.random.default_rng(0)
    w = rng.standard_normal((32, 24)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/layer.0/dense/MatMul")],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "l", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "l", 24])],
        [numpy_helper.from_array(w, "w")],
    )
    src, dst = tmp_path / "f.onnx", tmp_path / "q.onnx"
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(src))
    assert quantize_int8_per_token(src, dst) == ["/layer.0/dense/MatMul"]
    run = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"]).run
    x = rng.standard_normal((4, 5, 32)).astype(np.float32)
    x[3] *= 100.0  # a loud companion: with one scale per tensor it would flatten the others
    (together,) = run(None, {"x": x})
    (alone,) = run(None, {"x": x[:1]})
    assert np.array_equal(together[:1], alone)  # bitwise: the int8 product is exact
    exact = x @ w
    rel = np.abs(together - exact).max(axis=-1) / np.abs(exact).max(axis=-1)
    assert rel.max() < 0.05
