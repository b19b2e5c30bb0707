"""One contract for every index backend, checked against numpy brute force: VectorIndex (add,
remove, search, save) and the maintenance protocol MaintainedIndex (trained, gate, retrain,
tombstones, compaction).

Trained types get small structural params (nlist 16, train_min 500) so N=2000 vectors take them
through training, while the 5- and 10-vector cases exercise their untrained (exact) state.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.errors import InvalidInput
from embedstack.index import faiss_index, scann_index
from embedstack.index.base import MaintainedIndex, VectorIndex
from embedstack.index.factory import create_index, load_index
from embedstack.index.gate import recall_at_k
from embedstack.index.params import TRAINED_TYPES
from tests.conftest import clustered as clustered_points

DIM = 32
N = 2000
K = 10
METRICS = ("cosine", "ip", "l2")
HAVE_SCANN = True
try:
    import scann  # noqa: F401
except ImportError:
    HAVE_SCANN = False
needs_scann = pytest.mark.skipif(not HAVE_SCANN, reason="scann not installed (embedstack[scann])")

# name: (type, params, min recall@10, score tolerance: 0 exact, else max |score - true score|)
BACKENDS: dict[str, tuple[str, dict[str, Any], float, float]] = {
    "exact": ("exact", {}, 1.0, 0.0),
    "flat": ("flat", {}, 1.0, 0.0),
    "hnsw": ("hnsw", {}, 0.95, 0.0),
    "hnsw_sq8": ("hnsw_sq8", {"train_min": 500}, 0.85, 0.05),
    "sq8": ("sq8", {"train_min": 500}, 0.85, 0.05),
    "ivf_flat": ("ivf_flat", {"nlist": 16, "train_min": 500}, 0.95, 0.0),
    "ivf_pq": ("ivf_pq", {"nlist": 16, "m": 8, "nbits": 6, "train_min": 500}, 0.9, 0.0),
    "ivf_pq_raw": (
        "ivf_pq",
        {"nlist": 16, "m": 16, "nbits": 6, "train_min": 500, "refine_factor": 0, "recall_floor": 0},
        0.3,
        1.0,
    ),
    "scann": ("scann", {"train_min": 500}, 0.8, 0.05),
    "binary": ("binary", {"train_min": 500}, 0.9, 0.01),
    "binary_hnsw": ("binary", {"train_min": 500, "M": 16}, 0.85, 0.01),
}
NAMES = tuple(BACKENDS)
TOMBSTONED = (
    "flat",
    "hnsw",
    "hnsw_sq8",
    "sq8",
    "ivf_flat",
    "ivf_pq",
    "ivf_pq_raw",
    "binary",
    "binary_hnsw",
)


def backend_param(name: str) -> Any:
    return pytest.param(name, marks=needs_scann) if name == "scann" else name


ALL = [backend_param(n) for n in NAMES]
CASES = [
    pytest.param(n, m, marks=needs_scann) if n == "scann" else (n, m)
    for n in NAMES
    for m in METRICS
]


pytestmark = pytest.mark.usefixtures("single_omp_thread")


def clustered(n: int, seed: int, metric: str) -> np.ndarray:
    """Tight clusters around 50 fixed centers (the same for every seed); unit length for cosine."""
    return clustered_points(
        n, seed, dim=DIM, centers=50, spread=0.15, center_seed=1234, normalize=metric == "cosine"
    )


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


def new_index(name: str, metric: str) -> VectorIndex:
    index_type, params, _, _ = BACKENDS[name]
    return create_index(index_type, DIM, metric, params)


def make(name: str, metric: str, n: int = N, seed: int = 0) -> tuple[VectorIndex, np.ndarray]:
    vecs = clustered(n, seed, metric)
    index = new_index(name, metric)
    index.add(ids_of(n), vecs)  # sparse, non-positional ids
    return index, vecs


def ids_of(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) * 3 + 1


def min_recall(name: str) -> float:
    return BACKENDS[name][2]


def true_scores(vecs: np.ndarray, got: np.ndarray, queries: np.ndarray, metric: str) -> np.ndarray:
    v = vecs[(got - 1) // 3].astype(np.float64)
    if metric == "l2":
        return np.linalg.norm(v - queries[:, None, :], axis=2)
    return np.einsum("qkd,qd->qk", v, queries.astype(np.float64))


def check_scores(
    name: str, scores: np.ndarray, got: np.ndarray, vecs: np.ndarray, q: np.ndarray, metric: str
) -> None:
    tol = BACKENDS[name][3]
    true = true_scores(vecs, got, q, metric)
    scale = np.abs(true).max()
    np.testing.assert_allclose(scores, true, rtol=1e-4, atol=max(1e-4, tol * scale))


@pytest.mark.parametrize(("name", "metric"), CASES)
def test_search_matches_brute_force(name: str, metric: str) -> None:
    index, vecs = make(name, metric)
    queries = clustered(50, 99, metric)
    scores, got = index.search(queries, K)
    truth_scores, truth = ground_truth(vecs, ids_of(N), queries, K, metric)
    assert scores.shape == got.shape == (50, K)
    assert scores.dtype == np.float32 and got.dtype == np.int64
    assert (got >= 0).all()
    assert recall_at_k(got, truth) >= min_recall(name)
    check_scores(name, scores, got, vecs, queries, metric)
    if min_recall(name) == 1.0:
        np.testing.assert_allclose(scores, truth_scores, rtol=1e-4, atol=1e-4)
    step = np.diff(scores, axis=1)
    assert (step >= -1e-6).all() if metric == "l2" else (step <= 1e-6).all()


@pytest.mark.parametrize(("name", "metric"), CASES)
def test_remove_never_returns_removed(name: str, metric: str) -> None:
    index, vecs = make(name, metric)
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
    assert recall_at_k(got, truth) >= min_recall(name)


@pytest.mark.parametrize("name", ALL)
def test_duplicate_add_is_skipped(name: str) -> None:
    index, vecs = make(name, "cosine")
    queries = vecs[:5]
    before = index.search(queries, K)
    index.add(ids_of(N)[:100], clustered(100, 5, "cosine"))  # present: skipped, vectors kept
    assert index.count() == N
    after = index.search(queries, K)
    np.testing.assert_array_equal(before[1], after[1])
    fresh = np.array([10**6, 10**6, 10**6 + 1, 1], dtype=np.int64)  # in-batch dup + old id
    index.add(fresh, clustered(4, 6, "cosine"))
    assert index.count() == N + 2


@pytest.mark.parametrize(("name", "metric"), CASES)
@pytest.mark.parametrize("path", ["exact-subset", "selector"])
def test_allow_filter(name: str, metric: str, path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    if path == "selector":  # force the graph/IVF selector (or over-fetch) path for 1,000 ids
        monkeypatch.setattr(faiss_index, "SMALL_ALLOW_MIN", 0)
        monkeypatch.setattr(scann_index, "SMALL_ALLOW_MIN", 0)
    index, vecs = make(name, metric)
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
    floor = min_recall(name) if path == "selector" else min(1.0, min_recall(name) + 0.1)
    assert recall_at_k(got, truth) >= (0.9 if name == "hnsw" and path == "selector" else floor)
    _, none = index.search(queries, K, allow=np.array([], dtype=np.int64))
    assert (none == -1).all()


@pytest.mark.parametrize(("name", "metric"), CASES)
def test_save_load_round_trip(name: str, metric: str, tmp_path: Path) -> None:
    index, vecs = make(name, metric)
    removed = ids_of(N)[:300]
    index.remove(removed)
    queries = clustered(30, 12, metric)
    before = index.search(queries, K)
    index.save(tmp_path / "idx")
    meta = json.loads((tmp_path / "idx" / "index.json").read_text())
    assert (meta["type"], meta["dim"], meta["metric"], meta["count"]) == (
        BACKENDS[name][0],
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
    if name in TOMBSTONED:
        assert loaded.tombstone_ratio() == pytest.approx(300 / N)
    with pytest.raises(FileExistsError):
        index.save(tmp_path / "idx")


@pytest.mark.parametrize(("name", "metric"), CASES)
def test_k_larger_than_count_pads(name: str, metric: str) -> None:
    index, vecs = make(name, metric, n=5)
    scores, got = index.search(vecs[:2], 8)
    assert (got[:, :5] >= 0).all() and (got[:, 5:] == -1).all()
    pad = np.inf if metric == "l2" else -np.inf
    assert (scores[:, 5:] == pad).all() and np.isfinite(scores[:, :5]).all()


@pytest.mark.parametrize("name", ALL)
def test_empty_index_returns_all_padding(name: str) -> None:
    index = new_index(name, "l2")
    scores, got = index.search(clustered(3, 1, "l2"), 4)
    assert got.shape == (3, 4) and (got == -1).all() and (scores == np.inf).all()
    assert index.count() == 0


@pytest.mark.parametrize("name", ALL)
def test_bad_shapes_raise(name: str) -> None:
    index, vecs = make(name, "ip", n=10)
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


@pytest.mark.parametrize("name", ALL)
def test_removed_id_can_be_added_again(name: str) -> None:
    index, vecs = make(name, "l2")
    ids = ids_of(N)
    assert index.remove(ids[:1]) == 1
    index.add(ids[:1], vecs[10:11])  # the id comes back with another vector
    assert index.count() == N
    _, got = index.search(vecs[10:11], 2)
    assert set(got[0].tolist()) == {1, 31}


@pytest.mark.parametrize("name", ALL)
def test_concurrent_search_during_writes(name: str) -> None:
    index, vecs = make(name, "l2", n=500)
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


# -- the maintenance protocol (base.MaintainedIndex) ----------------------------------------------
TRAINED_NAMES = tuple(n for n in NAMES if BACKENDS[n][0] in TRAINED_TYPES)
GATE_KEYS = {"floor", "recall", "knobs", "passed"}


def grow(index: VectorIndex, vecs: np.ndarray, upto: int, start: int = 0) -> None:
    index.add(ids_of(upto)[start:], vecs[start:upto])


@pytest.mark.parametrize("name", ALL)
def test_trained_and_needs_retrain_after_growth(name: str, tmp_path: Path) -> None:
    """train_min 500, retrain_growth 4: trains at 500, needs a retrain past 2,000 live vectors.
    Untrained families are trained from the start and never need a retrain."""
    family_trains = name in TRAINED_NAMES
    vecs = clustered(N + 1, 0, "cosine")
    index = new_index(name, "cosine")
    assert isinstance(index, MaintainedIndex)
    grow(index, vecs, 400)
    assert index.trained is not family_trains and not index.needs_retrain()
    assert index.gate == {}
    grow(index, vecs, 500, start=400)  # reaches train_min: trains on exactly 500
    assert index.trained and not index.needs_retrain()
    if family_trains:
        assert set(index.gate) == GATE_KEYS and index.gate["knobs"] == index.knobs
    grow(index, vecs, N, start=500)  # 2,000 == 4 x 500: not past it yet
    assert not index.needs_retrain()
    grow(index, vecs, N + 1, start=N)
    assert index.needs_retrain() is family_trains
    index.save(tmp_path / "idx")
    loaded = load_index(tmp_path / "idx")  # the training state survives a reload
    assert isinstance(loaded, MaintainedIndex)
    assert loaded.needs_retrain() is family_trains and loaded.trained
    assert loaded.knobs == index.knobs
    fresh = index.retrained()
    assert isinstance(fresh, MaintainedIndex)
    assert fresh.trained and not fresh.needs_retrain() and fresh.count() == N + 1
    queries = clustered(50, 99, "cosine")
    _, got = fresh.search(queries, K)
    _, truth = ground_truth(vecs, ids_of(N + 1), queries, K, "cosine")
    # sq8 types retrain on their decoded codes (quantized twice): ~0.1 below a first training
    assert recall_at_k(got, truth) >= min_recall(name) - 0.1


@pytest.mark.parametrize("name", [backend_param(n) for n in TRAINED_NAMES])
def test_needs_retrain_after_churn(name: str) -> None:
    """Same live count, but more vectors added since training than 4 x the trained size."""
    vecs = clustered(2900, 0, "cosine")
    ids = ids_of(2900)
    index = new_index(name, "cosine")
    grow(index, vecs, 500)
    assert index.trained and not index.needs_retrain()
    for r in range(6):  # a sliding window: the oldest 400 out, 400 new in, 500 live throughout
        assert not index.needs_retrain()  # added 400 r <= 2,000 so far
        index.remove(ids[400 * r : 400 * r + 400])
        new = slice(500 + 400 * r, 900 + 400 * r)
        index.add(ids[new], vecs[new])
        assert index.count() == 500
    assert index.needs_retrain()  # 2,400 added since training on 500
    assert not index.retrained().needs_retrain()


@pytest.mark.parametrize("name", ALL)
def test_tombstone_ratio_rises_and_compaction_clears_it(name: str) -> None:
    index, vecs = make(name, "l2")
    ids = ids_of(N)
    assert index.tombstone_ratio() == 0.0
    index.remove(ids[:500])
    ratio = index.tombstone_ratio()
    assert ratio == (pytest.approx(500 / N) if name in TOMBSTONED else 0.0)
    index.remove(ids[500:600])
    assert index.tombstone_ratio() == (pytest.approx(600 / N) if name in TOMBSTONED else 0.0)
    compact = index.compacted()
    assert isinstance(compact, MaintainedIndex)
    assert compact.tombstone_ratio() == 0.0 and compact.count() == N - 600
    assert compact.knobs == index.knobs and compact.trained == index.trained
    queries = vecs[:600:20]  # each sits on a removed vector
    _, got = compact.search(queries, K)
    assert (got >= 0).all() and not np.isin(got, ids[:600]).any()
    _, truth = ground_truth(vecs[600:], ids[600:], queries, K, "l2")
    assert recall_at_k(got, truth) >= min_recall(name)
