"""Trained index types: exact until the threshold, training, the recall gate, retraining, knobs."""

from __future__ import annotations

from functools import partial
from typing import Any

import faiss
import numpy as np
import pytest

from embedstack.errors import InvalidInput
from embedstack.index.factory import INDEX_TYPES, create_index, validate_index_params
from embedstack.index.faiss_index import FaissIndex
from embedstack.index.gate import recall_at_k, tune
from embedstack.index.params import INDEX_PARAMS
from tests.conftest import clustered as clustered_points

DIM = 32
K = 10


pytestmark = pytest.mark.usefixtures("single_omp_thread")
clustered = partial(clustered_points, dim=DIM, center_seed=77)


def truth_ids(vecs: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return ids[np.argsort(-(queries @ vecs.T), axis=1)[:, :K]]


def ivf(**params: object) -> FaissIndex:
    index = create_index("ivf_flat", DIM, "cosine", {"nlist": 8, "train_min": 400, **params})
    assert isinstance(index, FaissIndex)
    return index


def test_serves_exactly_until_threshold_then_trains() -> None:
    index = ivf(nprobe=1, recall_floor=0)
    vecs = clustered(1000, 1)
    ids = np.arange(1000, dtype=np.int64)
    index.add(ids[:399], vecs[:399])
    assert not index.trained and index.gate == {}
    queries = clustered(20, 2)
    _, got = index.search(queries, K)
    np.testing.assert_array_equal(got, truth_ids(vecs[:399], ids[:399], queries))
    index.add(ids[399:], vecs[399:])  # crosses 400 inside this add
    assert index.trained and index.count() == 1000
    _, got = index.search(queries, K)
    assert recall_at_k(got, truth_ids(vecs, ids, queries)) < 1.0  # nprobe=1 of 8: really IVF now


def test_gate_raises_nprobe_to_reach_floor() -> None:
    index = ivf(nprobe=1, recall_floor=0.95)
    vecs = clustered(2000, 3)
    index.add(np.arange(2000), vecs)
    gate = index.gate
    assert gate["passed"] and gate["recall"] >= 0.95
    assert index.knobs["nprobe"] > 1 == index.params["nprobe"]
    queries = clustered(100, 4)
    _, got = index.search(queries, K)
    assert recall_at_k(got, truth_ids(vecs, np.arange(2000), queries)) >= 0.93


def test_gate_reports_failure_when_caps_are_hit() -> None:
    def never_right(q: np.ndarray, k: int, knobs: dict[str, int]) -> np.ndarray:
        return np.full((len(q), k), -1, dtype=np.int64)

    vecs = clustered(300, 5)
    result = tune(never_right, vecs, np.arange(300), "cosine", {"nprobe": 1}, {"nprobe": 4}, 0.9)
    assert not result.passed and result.knobs["nprobe"] <= 4 and result.recall == 0.0


def test_needs_retrain_after_growth_and_retrained_resizes() -> None:
    index = create_index("ivf_pq", DIM, "cosine", {"m": 8, "nbits": 6, "train_min": 500})
    assert isinstance(index, FaissIndex)
    vecs = clustered(2600, 6)
    ids = np.arange(2600, dtype=np.int64) * 7
    index.add(ids[:500], vecs[:500])
    assert index.trained and not index.needs_retrain()
    small_nlist = faiss.extract_index_ivf(index._faiss).nlist
    index.add(ids[500:2000], vecs[500:2000])
    assert not index.needs_retrain()  # 2000 == 4 x 500: not past it yet
    index.add(ids[2000:], vecs[2000:])
    index.remove(ids[:10])
    assert index.needs_retrain()
    fresh = index.retrained()
    assert fresh.trained and not fresh.needs_retrain() and fresh.count() == 2590
    assert faiss.extract_index_ivf(fresh._faiss).nlist > small_nlist
    assert fresh.gate["passed"]
    queries = clustered(50, 7)
    _, got = fresh.search(queries, K)
    assert not np.isin(got, ids[:10]).any()
    assert recall_at_k(got, truth_ids(vecs[10:], ids[10:], queries)) >= 0.9


def test_retrain_growth_zero_never_retrains() -> None:
    index = ivf(retrain_growth=0)
    index.add(np.arange(5000), clustered(5000, 8))
    assert index.trained and not index.needs_retrain()


@pytest.mark.parametrize(
    ("index_type", "knob", "value"),
    [("hnsw", "ef_search", 300), ("ivf_flat", "nprobe", 8), ("ivf_pq", "refine_factor", 32)],
)
def test_per_call_knobs(index_type: str, knob: str, value: int) -> None:
    params = {} if index_type == "hnsw" else {"nlist": 8, "train_min": 400, "recall_floor": 0}
    if index_type == "ivf_pq":
        params |= {"m": 8, "nbits": 6}
    index = create_index(index_type, DIM, "cosine", params)
    vecs = clustered(1500, 9)
    index.add(np.arange(1500), vecs)
    queries = clustered(50, 10)
    truth = truth_ids(vecs, np.arange(1500), queries)
    _, got = index.search(queries, K, **{knob: value})
    assert recall_at_k(got, truth) >= 0.97
    with pytest.raises(InvalidInput, match=knob):
        index.search(queries, K, **{knob: 0})
    with pytest.raises(InvalidInput, match="not a search parameter"):
        index.search(queries, K, M=4)


def test_refine_knob_needs_a_float_store() -> None:
    index = create_index("ivf_pq", DIM, "l2", {"m": 8, "refine_factor": 0, "train_min": 400})
    index.add(np.arange(600), clustered(600, 11))
    with pytest.raises(InvalidInput, match="refine_factor=0"):
        index.search(clustered(2, 12), K, refine_factor=4)


def test_factory_validation() -> None:
    assert INDEX_TYPES == (
        "exact",
        "flat",
        "hnsw",
        "hnsw_sq8",
        "sq8",
        "ivf_flat",
        "ivf_pq",
        "binary",
        "scann",
    )
    assert validate_index_params("hnsw", {"M": 16}) == {
        "M": 16,
        "ef_construction": 100,
        "ef_search": 64,
    }
    assert validate_index_params("flat", None) == {}
    full = validate_index_params("ivf_pq", {"nprobe": 8})
    assert full == {key: p.default for key, p in INDEX_PARAMS["ivf_pq"].items()} | {"nprobe": 8}
    with pytest.raises(InvalidInput, match="exact, flat, hnsw, hnsw_sq8"):
        create_index("ivf", DIM, "l2", {})
    with pytest.raises(InvalidInput, match="valid: M, ef_construction, ef_search"):
        validate_index_params("hnsw", {"m": 16})
    with pytest.raises(InvalidInput, match="valid: none"):
        validate_index_params("exact", {"M": 16})
    for bad in (0, 10**6, True, 1.5, "32"):
        with pytest.raises(InvalidInput, match="M"):
            validate_index_params("hnsw", {"M": bad})
    with pytest.raises(InvalidInput, match="recall_floor"):
        validate_index_params("sq8", {"recall_floor": 1.5})
    with pytest.raises(InvalidInput, match="must divide dim"):
        create_index("ivf_pq", DIM, "l2", {"m": 5})
    with pytest.raises(InvalidInput, match="metric"):
        create_index("exact", DIM, "dot", {})
    with pytest.raises(InvalidInput, match="dim"):
        create_index("hnsw", 0, "l2", {})


@pytest.mark.parametrize("index_type", ["ivf_flat", "sq8", "scann"])
def test_retrainer_snapshots_then_trains_off_the_write_path(index_type: str) -> None:
    if index_type == "scann":
        pytest.importorskip("scann")
    index: Any = create_index(index_type, DIM, "cosine", {"train_min": 400})
    vecs = clustered(2000, 13)
    index.add(np.arange(1500), vecs[:1500])
    train = index.retrainer()  # snapshot of 1,500 vectors
    index.add(np.arange(1500, 2000), vecs[1500:])  # lands after the snapshot
    index.remove(np.arange(10))
    fresh = train()  # the manager replays the store's later changes onto it, then swaps
    assert fresh.trained and fresh.count() == 1500 and index.count() == 1990
    fresh.remove(np.arange(10))
    fresh.add(np.arange(1500, 2000), vecs[1500:])
    queries = clustered(50, 14)
    _, got = fresh.search(queries, K)
    assert recall_at_k(got, truth_ids(vecs[10:], np.arange(10, 2000), queries)) >= 0.9
