"""The tuner on small clustered data: exact recall, the recall-floor refusal, the choice rule."""

from __future__ import annotations

import re

import numpy as np
import pytest

from embedstack.errors import InvalidInput
from embedstack.index import scann_index
from embedstack.index.gate import recall_at_k
from embedstack.index.tuner import (
    Failure,
    Measurement,
    candidate_grid,
    check_recall_floor,
    choose,
    evaluate,
    evaluate_grid,
    exact_neighbors,
    index_config,
)
from tests.conftest import clustered

DIM = 32


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vectors = clustered(3100, 0, dim=DIM, spread=0.4)
    ids = np.arange(100, 3100, dtype=np.int64)  # not positions: the ids must come back as given
    return ids, vectors[100:], vectors[:100]


def test_recall_at_k_counts_overlap_and_ignores_padding() -> None:
    truth = np.array([[1, 2, 3], [4, -1, -1]])
    found = np.array([[3, 9, 1], [4, 5, 6]])
    assert recall_at_k(found, truth) == pytest.approx(3 / 4)


def test_flat_has_recall_one(data: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
    ids, base, queries = data
    m = evaluate("flat", {}, DIM, "cosine", ids, base, queries, 10)
    assert m.recall == 1.0 and m.n == len(ids) and m.queries == len(queries)
    assert m.p99_ms >= m.p50_ms > 0 and m.qps > 0 and m.build_s >= 0
    assert m.bytes_per_vector >= DIM * 4


def test_grid_shares_builds_and_reports_failures(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ids, base, queries = data
    grid = [("hnsw", {"M": 8, "ef_search": 8}), ("hnsw", {"M": 8, "ef_search": 64}),
            ("ivf_pq", {"m": 5})]  # fmt: skip
    truth = exact_neighbors(ids, base, queries, 10, "cosine")
    low, high, bad = list(evaluate_grid(grid, DIM, "cosine", ids, base, queries, 10, truth))
    assert isinstance(low, Measurement) and isinstance(high, Measurement)
    assert low.build_s == high.build_s  # one build, ef_search passed per call
    assert high.recall >= low.recall and high.knobs["ef_search"] == 64
    assert isinstance(bad, Failure) and "divide" in bad.reason


def test_candidate_grid_is_sized_to_the_data() -> None:
    small = candidate_grid(3000, 32)
    types = {t for t, _ in small}
    assert {"flat", "hnsw", "hnsw_sq8", "sq8", "ivf_flat"} <= types
    assert "exact" not in types and "ivf_pq" not in types  # PQ codebooks need ~10k vectors
    assert all(p.get("recall_floor", 0) == 0 for _, p in small)  # rows measure their own knobs
    big = candidate_grid(50_000, 384)
    pq = [p for t, p in big if t == "ivf_pq"]
    assert pq and all(384 % p["m"] == 0 for p in pq)
    assert len(big) <= 20
    assert {t for t, _ in candidate_grid(500, 32)} == {"flat", "hnsw"}


def test_check_recall_floor_refuses_with_the_measured_recall(
    data: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    ids, base, _ = data
    params = {"nlist": 64, "nprobe": 1, "recall_floor": 0}
    with pytest.raises(InvalidInput) as err:
        check_recall_floor("ivf_flat", params, DIM, "cosine", ids, base, 10, floor=0.999)
    found = re.search(r"recall@10 (\d\.\d{3})", err.value.message)
    assert found and float(found.group(1)) < 0.999, err.value.message
    assert "floor 0.999" in err.value.message
    ok = check_recall_floor("flat", {}, DIM, "cosine", ids, base, 10, floor=1.0)
    assert ok.recall == 1.0 and ok.queries == 200 and ok.n == len(ids) - 200


def _m(index_type: str, recall: float, mem: int, p99: float) -> Measurement:
    return Measurement(index_type, {}, 10, 1000, 100, recall, p99 / 2, p99, 1000.0, mem, 0.1)


def test_choose_picks_least_memory_then_latency() -> None:
    rows = [
        _m("flat", 1.0, 1_600_000, 9.0),
        _m("hnsw", 0.99, 1_700_000, 0.5),
        _m("sq8", 0.97, 400_000, 6.0),
        _m("hnsw_sq8", 0.96, 550_000, 0.4),
        _m("ivf_pq", 0.70, 100_000, 0.2),  # smallest, but under the floor
        Failure("scann", {}, "not installed"),
    ]
    assert choose(rows, 0.95).index_type == "sq8"  # type: ignore[union-attr]
    assert choose(rows, 0.95, p99_ms=1.0).index_type == "hnsw_sq8"  # type: ignore[union-attr]
    assert choose(rows, 0.98, p99_ms=1.0).index_type == "hnsw"  # type: ignore[union-attr]
    tie = [_m("hnsw", 0.99, 1_700_000, 0.9), _m("hnsw", 0.99, 1_700_000, 0.3)]
    assert choose(tie, 0.95).p99_ms == 0.3  # type: ignore[union-attr]
    assert choose(rows, 0.999, p99_ms=1.0) is None
    assert choose(rows, 1.01) is None


def test_index_config_restores_the_gate() -> None:
    m = Measurement("ivf_flat", {"nlist": 0, "nprobe": 8, "recall_floor": 0}, 10, 1, 1,
                    1.0, 1.0, 1.0, 1.0, 1, 0.0)  # fmt: skip
    assert index_config(m, 0.95) == {"type": "ivf_flat", "nlist": 0, "nprobe": 8,
                                     "recall_floor": 0.95}  # fmt: skip
    assert index_config(_m("hnsw", 1, 1, 1), 0.9) == {"type": "hnsw"}


def test_a_family_that_cannot_be_built_is_reported_not_dropped(
    data: tuple[np.ndarray, np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    def missing() -> None:
        raise InvalidInput("index type 'scann' needs the scann package")

    monkeypatch.setattr(scann_index, "require_scann", missing)
    grid = candidate_grid(3000, DIM, ["scann", "nope", "flat"])
    assert [t for t, _ in grid] == ["scann", "nope", "flat"]  # one row per failed family
    ids, base, queries = data
    scann, nope, flat = list(evaluate_grid(grid, DIM, "cosine", ids, base, queries, 10))
    assert isinstance(scann, Failure) and "scann package" in scann.reason
    assert isinstance(nope, Failure) and "unknown index type 'nope'" in nope.reason
    assert isinstance(flat, Measurement) and flat.recall == 1.0
