"""The recall floor: when a quantized index trains, it measures itself and raises its knobs.

Queries are a sample of the training vectors themselves, each excluded from its own answer
(leave-one-out), and the truth is exact search over the same vectors. Starting from the configured
knobs, the gate doubles them in turn (nprobe, refine_factor, ef_search, ...) until recall@10
reaches the floor or every knob is at its cap, and keeps the cheapest setting it tried that
passed. The result is recorded, so an index that could not reach its floor says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstack.index.common import brute_force

GATE_QUERIES = 200
GATE_K = 10
# Aim above the floor by the gap measured between the self-test and queries that are not in the
# index: leave-one-out samples sit on indexed points and helped train the quantizer, so they score
# higher than real queries. Measured gaps (recall@10, ivf_flat): a user's 6,000 paragraphs with
# 200 held out, 0.883 held-out where the self-test passed at >= 0.92 (gap >= 0.037); GCIDE
# entries with 200 held out (bench/gate_margin.py, mean of 3 splits): 6,000 vectors, 0.010-0.021
# between recall 0.8 and 0.91 and up to 0.045 at nprobe 1; 2,100 vectors, up to 0.035. The online
# recall check (registry/quality.py) re-tunes on live queries when even this is not enough.
MARGIN = 0.04
MAX_STEPS = 16
PLATEAU = 0.003  # a doubling that gains less than this marks its knob saturated
# neighbour_mixes: how far towards a neighbour a held-out-like query moves
MIX_LOW, MIX_HIGH = 0.3, 0.5

SearchFn = Callable[[np.ndarray, int, dict[str, int]], np.ndarray]


@dataclass
class GateResult:
    floor: float
    recall: float
    knobs: dict[str, int]
    passed: bool
    tried: list[tuple[dict[str, int], float]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "floor": self.floor,
            "recall": round(self.recall, 4),
            "knobs": dict(self.knobs),
            "passed": self.passed,
        }


def recall_at_k(
    found: Iterable[Iterable[int]], truth: Iterable[Iterable[int]], k: int = 0
) -> float:
    """Hits over wanted: for each query, how many of its true ids (-1 padding ignored) appear in
    what was found, summed, over the number of true ids (1.0 when there are none). With `k`,
    only the first k of each found and truth row count. Rows may be arrays or lists."""
    hits = total = 0
    for got, want in zip(found, truth, strict=True):
        got_ids, want_ids = np.asarray(got).tolist(), np.asarray(want).tolist()
        if k:
            got_ids, want_ids = got_ids[:k], want_ids[:k]
        wanted = {i for i in want_ids if i >= 0}
        hits += len(wanted.intersection(got_ids))
        total += len(wanted)
    return hits / total if total else 1.0


def leave_one_out_recall(
    search: SearchFn,
    knobs: dict[str, int],
    queries: np.ndarray,
    query_ids: np.ndarray,
    truth: np.ndarray,
) -> float:
    got = search(queries, GATE_K + 1, knobs)
    hits = 0
    for row, own in enumerate(query_ids.tolist()):
        mine = [i for i in got[row].tolist() if i != own and i >= 0][:GATE_K]
        hits += len(set(mine) & set(truth[row].tolist()))
    return hits / max(1, truth.size)


def plain_recall(
    search: SearchFn, knobs: dict[str, int], queries: np.ndarray, truth: np.ndarray
) -> float:
    """Recall@GATE_K of queries that are not in the index (their own id is no answer to drop)."""
    got = search(queries, GATE_K, knobs)
    return recall_at_k(got, truth, GATE_K)


def _unit_if(x: np.ndarray, metric: str) -> np.ndarray:
    if metric != "cosine":
        return x
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def neighbour_mixes(
    vectors: np.ndarray, rows: np.ndarray, neighbour_rows: np.ndarray, metric: str, seed: int = 0
) -> np.ndarray:
    """Held-out-like queries: each sampled vector moved MIX_LOW..MIX_HIGH of the way towards
    one of its own nearest neighbours (a random one of them); new points between real ones,
    where a new paragraph lands, rather than on an indexed point."""
    rng = np.random.default_rng(seed)
    pick = neighbour_rows[np.arange(len(rows)), rng.integers(0, neighbour_rows.shape[1], len(rows))]
    t = rng.uniform(MIX_LOW, MIX_HIGH, (len(rows), 1)).astype(np.float32)
    mixed = (1 - t) * vectors[rows] + t * vectors[pick]
    return np.ascontiguousarray(_unit_if(mixed, metric), dtype=np.float32)


def noisy_copies(
    vectors: np.ndarray, rows: np.ndarray, scale: float, metric: str, seed: int = 0
) -> np.ndarray:
    """Sampled vectors plus an isotropic random offset of length `scale` (bench/gate_margin.py
    compares this with neighbour_mixes against real held-out queries)."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((len(rows), vectors.shape[1])).astype(np.float32)
    g *= scale / np.maximum(np.linalg.norm(g, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(_unit_if(vectors[rows] + g, metric), dtype=np.float32)


def _truth(vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    _, got = brute_force(vectors, ids, vectors[rows], GATE_K + 1, metric)
    own = ids[rows]
    out = np.empty((len(rows), GATE_K), dtype=np.int64)
    for r in range(len(rows)):
        out[r] = [i for i in got[r].tolist() if i != own[r]][:GATE_K]
    return out


def tune(
    search: SearchFn,
    vectors: np.ndarray,
    ids: np.ndarray,
    metric: str,
    knobs: dict[str, int],
    caps: dict[str, int],
    floor: float,
    seed: int = 0,
) -> GateResult:
    """Raise `knobs` (doubling, round robin over those below their `caps`) until recall reaches
    floor + MARGIN. A doubling that gains less than PLATEAU is undone and its knob left alone
    from then on. Fails (passed=False, best setting tried) when no knob can be raised further."""
    n = len(ids)
    if floor <= 0 or n <= GATE_K + 1:
        return GateResult(floor, float("nan"), dict(knobs), True)
    rows = np.random.default_rng(seed).choice(n, min(GATE_QUERIES, n), replace=False)
    truth = _truth(vectors, ids, rows, metric)
    queries, query_ids = vectors[rows], ids[rows]

    def measure(setting: dict[str, int]) -> float:
        return leave_one_out_recall(search, setting, queries, query_ids, truth)

    return raise_knobs(measure, knobs, caps, floor, min(1.0, floor + MARGIN))


def raise_knobs(
    measure: Callable[[dict[str, int]], float],
    knobs: dict[str, int],
    caps: dict[str, int],
    floor: float,
    target: float,
) -> GateResult:
    """The gate's search: double the knobs in turn until `measure` reaches `target`; passed
    when the kept setting reaches `floor`. Shared by the training gate (leave-one-out samples)
    and the online re-tune (sampled live queries, registry/quality.py)."""
    current = dict(knobs)
    recall = measure(current)
    tried = [(dict(current), recall)]
    saturated: set[str] = set()  # knobs whose doubling gained (almost) nothing: left as they were
    order = [key for key in knobs if key in caps]
    for step in range(MAX_STEPS):
        raisable = [k for k in order if current[k] < caps[k] and k not in saturated]
        if recall >= target or not raisable:
            break
        key = raisable[step % len(raisable)]
        trial = {**current, key: min(caps[key], max(1, current[key]) * 2)}
        got = measure(trial)
        tried.append((trial, got))
        if got - recall < PLATEAU:
            saturated.add(key)
            continue
        current, recall = trial, got
    if recall >= floor:
        return GateResult(floor, recall, current, True, tried)
    best_knobs, best = max(tried, key=lambda t: t[1])
    return GateResult(floor, best, best_knobs, False, tried)
