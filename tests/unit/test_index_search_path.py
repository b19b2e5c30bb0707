"""The faiss search path's shortcuts: padding ids through the IdMap sentinel, the pad check, and
one OpenMP thread for a single query without changing the caller's setting."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from embedstack.index.common import MIN_CAPACITY
from embedstack.index.factory import create_index
from embedstack.index.idmap import IdMap


@pytest.mark.parametrize("n", [0, 5, MIN_CAPACITY, MIN_CAPACITY + 1, 3 * MIN_CAPACITY])
def test_to_ids_maps_padding_at_every_capacity(n: int) -> None:
    built = IdMap(np.arange(n, dtype=np.int64) * 7)
    grown = IdMap()
    for start in range(0, n, 300):  # grows through append
        grown.append(np.arange(start, min(n, start + 300), dtype=np.int64) * 7)
    labels = np.array([[n - 1, -1, -1]] if n else [[-1, -1, -1]], dtype=np.int64)
    want = [[(n - 1) * 7, -1, -1]] if n else [[-1, -1, -1]]
    for m in (built, grown):
        assert m.to_ids(labels).tolist() == want


def _unit(n: int, dim: int, seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.mark.parametrize("index_type", ["flat", "hnsw"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_single_and_batch_queries_agree_and_pad(index_type: str, metric: str) -> None:
    x = _unit(6, 16, 0)
    index = create_index(index_type, 16, metric)
    index.add(np.arange(10, 16), x)
    index.remove(np.array([12]))
    scores, ids = index.search(x, 8)
    pad = np.inf if metric == "l2" else -np.inf
    assert (ids[:, 5:] == -1).all() and (scores[:, 5:] == pad).all()
    assert np.isfinite(scores[:, :5]).all() and 12 not in ids
    for row in range(len(x)):
        one_scores, one_ids = index.search(x[row : row + 1], 8)
        assert one_ids.tolist() == ids[row : row + 1].tolist()
        np.testing.assert_allclose(one_scores, scores[row : row + 1], rtol=1e-5)


def test_single_query_runs_on_one_omp_thread_and_restores_the_setting() -> None:
    x = _unit(200, 16, 1)
    index = create_index("flat", 16, "cosine")
    index.add(np.arange(200), x)
    seen: list[int] = []

    def work() -> None:
        faiss.omp_set_num_threads(2)
        for kwargs in ({}, {"allow": np.arange(50)}):
            assert index.search(x[:1], 3, **kwargs)[1][0, 0] == 0
            seen.append(faiss.omp_get_max_threads())

    worker = threading.Thread(target=work)
    worker.start()
    worker.join()
    assert seen == [2, 2]


def test_non_finite_queries_are_refused() -> None:
    from embedstack.errors import InvalidInput

    index = create_index("flat", 4, "l2")
    index.add(np.arange(3), _unit(3, 4, 2))
    for bad in (np.nan, np.inf):
        q = np.zeros((2, 4), np.float32)
        q[1, 2] = bad
        with pytest.raises(InvalidInput):
            index.search(q, 1)
