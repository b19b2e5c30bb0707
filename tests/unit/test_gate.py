"""The accuracy gate's arithmetic, its shipped real-text sample and its cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstack.inference.models.gate import (
    GateCache,
    GateReport,
    GateSample,
    compare,
    labeled_recall_at_k,
    load_sample,
    run_gate,
)
from embedstack.inference.models.race import race


def _unit(rng: np.random.Generator, n: int, d: int = 32) -> np.ndarray:
    v = rng.standard_normal((n, d))
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def _clustered(rng: np.random.Generator, queries: int, per: int) -> tuple[np.ndarray, GateSample]:
    centers = _unit(rng, queries)
    passages = np.repeat(centers, per, axis=0) + 0.3 * _unit(rng, queries * per)
    qs = centers + 0.3 * _unit(rng, queries)
    rel = [list(range(i * per, (i + 1) * per)) for i in range(queries)]
    sample = GateSample([f"p{i}" for i in range(len(passages))], [f"q{i}" for i in range(queries)], rel)  # fmt: skip
    return np.vstack([passages, qs]), sample


def test_shipped_sample_is_real_text_with_labels() -> None:
    sample = load_sample()
    assert len(sample.queries) == 520 and len(sample.passages) == 984
    assert "Memory Views" in sample.queries and len(set(sample.queries)) == 520
    assert all(rel and max(rel) < len(sample.passages) for rel in sample.relevant)
    small = sample.head(10)
    assert len(small.queries) == 10
    assert small.passages == [sample.passages[i] for r in sample.relevant[:10] for i in r]


def test_recall_at_k_by_hand() -> None:
    passages = np.eye(4)
    queries = np.array([[1.0, 0.1, 0, 0], [0, 0, 0.1, 1.0]])
    assert labeled_recall_at_k(passages, queries, [[0], [2]], k=1) == 0.5
    assert labeled_recall_at_k(passages, queries, [[0, 1], [3]], k=2) == 1.0


def test_identical_vectors_pass() -> None:
    vectors, sample = _clustered(np.random.default_rng(0), 40, 3)
    mean, worst, r_ref, r_cand, reasons = compare(vectors, vectors * 2.0, sample)  # scale-free
    assert reasons == [] and mean == pytest.approx(1.0) and worst == pytest.approx(1.0)
    assert r_ref == r_cand > 0.5


def test_small_noise_passes_and_large_noise_is_refused_with_numbers() -> None:
    rng = np.random.default_rng(1)
    vectors, sample = _clustered(rng, 40, 3)
    noise = rng.standard_normal(vectors.shape)
    assert compare(vectors, vectors + 1e-4 * noise, sample)[4] == []
    mean, worst, _, _, reasons = compare(vectors, vectors + 0.1 * noise, sample)
    assert mean < 0.999 and any("mean cosine" in r for r in reasons)
    assert any(f"{worst:.6f}" in r for r in reasons)


def test_recall_change_alone_refuses() -> None:
    rng = np.random.default_rng(2)
    vectors, sample = _clustered(rng, 40, 3)
    shuffled = vectors.copy()
    n = len(sample.passages)
    shuffled[:n] = vectors[rng.permutation(n)]  # same vectors, wrong passages: recall collapses
    *_, reasons = compare(
        vectors,
        shuffled,
        sample,
    )
    assert any("recall@10" in r for r in reasons)


def test_run_gate_and_cache_roundtrip(tmp_path: Path) -> None:
    vectors, sample = _clustered(np.random.default_rng(3), 10, 2)

    class Candidate:
        def embed_batch(self, texts: list[str], encoded: object = None) -> np.ndarray:
            where = {t: i for i, t in enumerate(sample.texts)}
            return vectors[[where[t] for t in texts]]

    report = run_gate("m", "b", (vectors, 100.0), Candidate(), sample)  # type: ignore[arg-type]
    assert report.passed and report.texts == len(sample.texts) and report.texts_per_s > 0
    assert "passed" in report.summary() and "min cosine 1.0000000" in report.summary()
    assert report.batch_invariant and report.deterministic
    cache = GateCache(tmp_path / "sub" / "gate.json")
    key = cache.key("f" * 64, "b")
    assert cache.get(key) is None
    cache.put(key, report)
    assert cache.get(key) == report
    assert GateCache(tmp_path / "sub" / "gate.json").all() == {key: report}
    assert key != cache.key("f" * 64, "b", machine="other")
    failed = GateReport("m", "b", False, 0.9, 0.8, 0.5, 0.4, 10, 1.0, 1.0, ["x"])
    assert "FAILED (x)" in failed.summary()


def test_race_times_every_embedder_and_the_choice_is_cached(tmp_path: Path) -> None:
    class Sleepy:
        def __init__(self, delay: float) -> None:
            self.delay = delay

        def embed_batch(self, texts: list[str], encoded: object = None) -> np.ndarray:
            import time

            time.sleep(self.delay)
            return np.zeros((len(texts), 2), dtype=np.float32)

    speeds = race({"slow": Sleepy(0.02), "fast": Sleepy(0.0)}, ["t"] * 10, rounds=2)  # type: ignore[dict-item]
    assert speeds["fast"] > speeds["slow"] > 0
    cache = GateCache(tmp_path / "gate.json")
    assert cache.get_choice("k") is None
    cache.put_choice("k", "fast", speeds)
    assert cache.get_choice("k") == "fast" and cache.get("k") is None and cache.all() == {}


class _FakeEngine:
    def __init__(self, name: str) -> None:
        self.name = name
        self.tokenizer = name

    def embed_batch(self, texts: list[str], encoded: object = None) -> np.ndarray:
        return np.full((len(texts), 2), 1.0 if self.name == "fast" else 0.0, dtype=np.float32)


class _FakeCatalog:
    """What AutoEmbedder needs from a Catalog; `choose` blocks until released."""

    def __init__(self, cached: str | None) -> None:
        import threading

        self.cached = cached
        self.release = threading.Event()
        self.choices = 0  # how often the gate + race ran

    def spec(self, model: str) -> str:
        return f"spec of {model}"

    def cached_auto_choice(self, model: str) -> str | None:
        return self.cached

    def choose(self, model: str, force_race: bool = False, stop: object = None) -> str:
        self.choices += 1
        self.release.wait(10)
        return "fast"

    def reference(self, model: str) -> object:
        from types import SimpleNamespace

        return SimpleNamespace(backend="ref")

    def build_as(self, model: str, backend: str) -> _FakeEngine:
        return _FakeEngine(backend)


def test_auto_serves_the_reference_until_the_gate_chooses() -> None:
    from embedstack.inference.models.auto import AutoEmbedder

    catalog = _FakeCatalog(cached=None)
    auto = AutoEmbedder(catalog, "m", background=True)  # type: ignore[arg-type]
    assert auto.backend == "auto:ref" and not auto.wait_selected(0)
    assert auto.embed_batch(["a"])[0, 0] == 0.0 and auto.spec == "spec of m"
    catalog.release.set()
    assert auto.wait_selected(10)
    assert auto.backend == "auto:fast" and auto.embed_batch(["a"])[0, 0] == 1.0
    cached = AutoEmbedder(_FakeCatalog(cached="fast"), "m")  # type: ignore[arg-type]
    assert cached.wait_selected(0) and cached.backend == "auto:fast"


def test_auto_gates_and_races_only_once_texts_reach_it_and_only_once() -> None:
    from embedstack.inference.models.auto import AutoEmbedder

    catalog = _FakeCatalog(cached=None)
    auto = AutoEmbedder(catalog, "m", background=True)  # type: ignore[arg-type]
    assert auto.selection == "deferred" and catalog.choices == 0 and auto._thread is None
    assert auto.embed_batch(["a"])[0, 0] == 0.0  # the reference answers the first texts
    catalog.release.set()
    assert auto.wait_selected(10) and auto.selection == "chosen"
    auto.embed_batch(["b"])
    assert catalog.choices == 1 and auto.backend == "auto:fast"
    # closed before any text (a server stopping): the choice never starts
    idle = _FakeCatalog(cached=None)
    closed = AutoEmbedder(idle, "m", background=True)  # type: ignore[arg-type]
    closed.close()
    closed.embed_batch(["a"])
    assert idle.choices == 0 and closed.selection == "deferred" and closed._thread is None
    assert AutoEmbedder(_FakeCatalog(cached="fast"), "m").selection == "cached"  # type: ignore[arg-type]
