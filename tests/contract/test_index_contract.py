"""One contract for every VectorIndex backend, checked against numpy brute force."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import numpy as np
import pytest

from embedstack.errors import InvalidInput
from embedstack.index import faiss_index
from embedstack.index.base import VectorIndex
from embedstack.index.factory import INDEX_TYPES, create_index, load_index, validate_index_params
from embedstack.index.faiss_index import FaissIndex

DIM = 32
N = 2000
K = 10
BACKENDS = ("exact", "flat", "hnsw")
METRICS = ("cosine", "ip", "l2")
CASES = [(b, m) for b in BACKENDS for m in METRICS]


def clustered(n: int, seed: int, metric: str, centers: int = 50) -> np.ndarray:
    """Points around fixed cluster centers (same centers for every seed)."""
    c = np.random.default_rng(1234).standard_normal((centers, DIM))
    rng = np.random.default_rng(seed)
    x = c[rng.integers(0, centers, n)] + 0.15 * rng.standard_normal((n, DIM))
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def ground_truth(
    vecs: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    v, q = vecs.astype(np.float64), queries.astype(np.float64)
    if metric == "l2":
        scores = np.linalg.norm(q[:, None, :] - v[None, :, :], axis=2)
        order = np.argsort(scores, axis=1)[:, :k]
    else:
        scores = q @ v.T
        order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), ids[order]


def recall(got: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(g.tolist()) & set(t.tolist())) for g, t in zip(got, truth, strict=True))
    return hits / truth.size


def make(backend: str, metric: str, n: int = N, seed: int = 0) -> tuple[VectorIndex, np.ndarray]:
    vecs = clustered(n, seed, metric)
    index = create_index(backend, DIM, metric, {})
    index.add(np.arange(n, dtype=np.int64) * 3 + 1, vecs)  # sparse, non-positional ids
    return index, vecs


def ids_of(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 3 + 1


def min_recall(backend: str) -> float:
    return 0.95 if backend == "hnsw" else 1.0


@pytest.mark.parametrize(("backend", "metric"), CASES)
def test_search_matches_brute_force(backend: str, metric: str) -> None:
    index, vecs = make(backend, metric)
    queries = clustered(50, 99, metric)
    scores, got = index.search(queries, K)
    truth_scores, truth = ground_truth(vecs, ids_of(N), queries, K, metric)
    assert scores.shape == got.shape == (50, K)
    assert scores.dtype == np.float32 and got.dtype == np.int64
    assert recall(got, truth) >= min_recall(backend)
    if backend != "hnsw":
        np.testing.assert_allclose(scores, truth_scores, rtol=1e-4, atol=1e-4)
    step = np.diff(scores, axis=1)
    assert (step >= -1e-6).all() if metric == "l2" else (step <= 1e-6).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_l2_scores_are_true_distances(backend: str) -> None:
    index, vecs = make(backend, "l2")
    queries = clustered(20, 7, "l2")
    scores, got = index.search(queries, K)
    rows = (got - 1) // 3
    true = np.linalg.norm(vecs[rows].astype(np.float64) - queries[:, None, :], axis=2)
    np.testing.assert_allclose(scores, true, rtol=1e-4, atol=1e-4)
    assert (np.diff(scores, axis=1) >= 0).all()


@pytest.mark.parametrize(("backend", "metric"), CASES)
def test_remove_never_returns_removed(backend: str, metric: str) -> None:
    index, vecs = make(backend, metric)
    ids = ids_of(N)
    removed = ids[::4]
    assert index.remove(np.concatenate([removed, [10**9]])) == len(removed)
    assert index.remove(removed) == 0
    assert index.count() == N - len(removed)
    queries = vecs[::40]  # many queries sit exactly on removed vectors
    _, got = index.search(queries, K)
    assert (got >= 0).all()
    assert not np.isin(got, removed).any()
    live = np.setdiff1d(np.arange(N), np.arange(N)[::4])
    _, truth = ground_truth(vecs[live], ids[live], queries, K, metric)
    assert recall(got, truth) >= min_recall(backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicate_add_is_skipped(backend: str) -> None:
    index, vecs = make(backend, "cosine")
    queries = vecs[:5]
    before = index.search(queries, K)
    index.add(ids_of(N)[:100], clustered(100, 5, "cosine"))  # present: skipped, vectors kept
    assert index.count() == N
    after = index.search(queries, K)
    np.testing.assert_array_equal(before[1], after[1])
    fresh = np.array([10**6, 10**6, 10**6 + 1, 1], dtype=np.int64)  # in-batch dup + old id
    index.add(fresh, clustered(4, 6, "cosine"))
    assert index.count() == N + 2


@pytest.mark.parametrize(("backend", "metric"), CASES)
@pytest.mark.parametrize("path", ["exact-subset", "selector"])
def test_allow_filter(
    backend: str, metric: str, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "selector":  # force the graph/selector path for a 1,000-id allow set
        monkeypatch.setattr(faiss_index, "SMALL_ALLOW_MIN", 0)
    index, vecs = make(backend, metric)
    ids = ids_of(N)
    rng = np.random.default_rng(3)
    size = 25 if path == "exact-subset" else 1000
    rows = np.sort(rng.choice(N, size, replace=False))
    index.remove(ids[rows[:5]])  # allowed but removed: must not come back
    allow = np.concatenate([ids[rows], [10**9]])  # plus an id that was never added
    queries = clustered(30, 11, metric)
    _, got = index.search(queries, K, allow=allow)
    assert (got >= 0).all()
    assert np.isin(got, ids[rows[5:]]).all()
    _, truth = ground_truth(vecs[rows[5:]], ids[rows[5:]], queries, K, metric)
    assert recall(got, truth) >= (0.9 if backend == "hnsw" and path == "selector" else 1.0)
    _, none = index.search(queries, K, allow=np.array([], dtype=np.int64))
    assert (none == -1).all()


@pytest.mark.parametrize(("backend", "metric"), CASES)
def test_save_load_round_trip(backend: str, metric: str, tmp_path: Path) -> None:
    index, vecs = make(backend, metric)
    removed = ids_of(N)[:300]
    index.remove(removed)
    queries = clustered(30, 12, metric)
    before = index.search(queries, K)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (meta["type"], meta["dim"], meta["metric"], meta["count"]) == (
        backend,
        DIM,
        metric,
        N - 300,
    )
    loaded = load_index(tmp_path / "idx")
    assert type(loaded) is type(index)
    assert loaded.count() == index.count()
    after = loaded.search(queries, K)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0], rtol=1e-5, atol=1e-5)
    _, got = loaded.search(vecs[:300:10], K)
    assert not np.isin(got, removed).any()
    loaded.add(ids_of(N)[300:400], vecs[300:400])  # live ids restored: all skipped
    assert loaded.count() == N - 300
    if isinstance(loaded, FaissIndex) and backend == "hnsw":
        assert meta["tombstones"] == removed.tolist()
        assert loaded.tombstone_ratio() == pytest.approx(300 / N)
        with pytest.raises(InvalidInput):
            loaded.add(removed[:1], vecs[:1])
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "idx")


@pytest.mark.parametrize(("backend", "metric"), CASES)
def test_k_larger_than_count_pads(backend: str, metric: str) -> None:
    index, vecs = make(backend, metric, n=5)
    scores, got = index.search(vecs[:2], 8)
    assert (got[:, :5] >= 0).all() and (got[:, 5:] == -1).all()
    pad = np.inf if metric == "l2" else -np.inf
    assert (scores[:, 5:] == pad).all() and np.isfinite(scores[:, :5]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_index_returns_all_padding(backend: str) -> None:
    index = create_index(backend, DIM, "l2", {})
    scores, got = index.search(clustered(3, 1, "l2"), 4)
    assert got.shape == (3, 4) and (got == -1).all() and (scores == np.inf).all()
    assert index.count() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_shapes_raise(backend: str) -> None:
    index, vecs = make(backend, "ip", n=10)
    with pytest.raises(InvalidInput):
        index.add(np.array([99], dtype=np.int64), np.zeros((1, DIM - 1), np.float32))
    with pytest.raises(InvalidInput):
        index.add(np.array([98, 99], dtype=np.int64), np.zeros((1, DIM), np.float32))
    with pytest.raises(InvalidInput):
        index.add(np.array([99], dtype=np.int64), np.full((1, DIM), np.nan, np.float32))
    with pytest.raises(InvalidInput):
        index.search(np.zeros((1, DIM + 1), np.float32), 3)
    with pytest.raises(InvalidInput):
        index.search(np.zeros(DIM, np.float32), 3)
    with pytest.raises(InvalidInput):
        index.search(vecs[:1], 0)
    assert index.count() == 10


def test_flat_readds_removed_id_hnsw_refuses() -> None:
    flat, vecs = make("flat", "l2", n=50)
    flat.remove(ids_of(50)[:1])
    flat.add(ids_of(50)[:1], vecs[10:11])
    _, got = flat.search(vecs[10:11], 2)
    assert set(got[0].tolist()) == {1, 31}
    hnsw, _ = make("hnsw", "l2", n=50)
    hnsw.remove(ids_of(50)[:1])
    with pytest.raises(InvalidInput, match="re-added"):
        hnsw.add(ids_of(50)[:2], vecs[:2])
    assert hnsw.count() == 49


def test_hnsw_per_call_ef_search() -> None:
    index, vecs = make("hnsw", "cosine")
    assert isinstance(index, FaissIndex)
    _, got = index.search(vecs[:5], K, ef_search=200)
    assert (got[:, 0] == ids_of(N)[:5]).all()
    with pytest.raises(InvalidInput):
        index.search(vecs[:5], K, ef_search=0)


def test_hnsw_compaction_after_churn() -> None:
    params = {"M": 16, "ef_construction": 80}
    index = FaissIndex(DIM, "cosine", "hnsw", params)
    pool = clustered(6000, 21, "cosine")
    rng = np.random.default_rng(4)
    index.add(np.arange(1000, dtype=np.int64), pool[:1000])
    live = np.arange(1000, dtype=np.int64)
    for r in range(10):
        new = np.arange(1000 + 500 * r, 1500 + 500 * r, dtype=np.int64)
        index.add(new, pool[new])
        live = np.concatenate([live, new])
        gone = rng.choice(live, 500, replace=False)
        assert index.remove(gone) == 500
        live = np.setdiff1d(live, gone)
    assert index.count() == len(live) == 1000
    assert index.tombstone_ratio() == pytest.approx(5000 / 6000)
    compact = index.compacted()
    fresh = FaissIndex(DIM, "cosine", "hnsw", params)
    fresh.add(live, pool[live])
    assert compact.count() == len(live) and compact.tombstone_ratio() == 0.0
    assert abs(compact.memory_bytes() - fresh.memory_bytes()) <= 0.1 * fresh.memory_bytes()
    assert compact.memory_bytes() < index.memory_bytes() / 3
    queries = clustered(50, 22, "cosine")
    _, truth = ground_truth(pool[live], live, queries, K, "cosine")
    r_compact = recall(compact.search(queries, K)[1], truth)
    r_fresh = recall(fresh.search(queries, K)[1], truth)
    assert abs(r_compact - r_fresh) <= 0.02 and r_compact >= 0.95
    assert recall(index.search(queries, K)[1], truth) >= 0.9  # old one still correct


@pytest.mark.parametrize("backend", BACKENDS)
def test_concurrent_search_during_writes(backend: str) -> None:
    index, vecs = make(backend, "l2", n=500)
    errors: list[BaseException] = []

    def searcher() -> None:
        try:
            for _ in range(20):
                _, got = index.search(vecs[:4], 5)
                assert (got >= 0).all()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    extra = clustered(400, 8, "l2")
    for i in range(20):
        index.add(np.arange(10**6 + 20 * i, 10**6 + 20 * i + 20), extra[20 * i : 20 * i + 20])
        index.remove(ids_of(500)[10 * i : 10 * i + 10])
    for t in threads:
        t.join()
    assert not errors
    assert index.count() == 500 + 400 - 200


def test_factory_validation() -> None:
    assert INDEX_TYPES == ("exact", "flat", "hnsw")
    assert validate_index_params("hnsw", {"M": 16}) == {
        "M": 16,
        "ef_construction": 200,
        "ef_search": 64,
    }
    assert validate_index_params("flat", None) == {}
    with pytest.raises(InvalidInput, match="exact, flat, hnsw"):
        create_index("ivf", DIM, "l2", {})
    with pytest.raises(InvalidInput, match="valid: M, ef_construction, ef_search"):
        validate_index_params("hnsw", {"m": 16})
    with pytest.raises(InvalidInput, match="valid: none"):
        validate_index_params("exact", {"M": 16})
    for bad in (0, 10**6, True, 1.5, "32"):
        with pytest.raises(InvalidInput, match="M"):
            validate_index_params("hnsw", {"M": bad})
    with pytest.raises(InvalidInput, match="metric"):
        create_index("exact", DIM, "dot", {})
    with pytest.raises(InvalidInput, match="dim"):
        create_index("hnsw", 0, "l2", {})
