"""Measure index configurations against exact search, and the recall-floor check.

`evaluate` builds one configuration and measures recall@k against exact ground truth, per-query
p50/p99 latency, batch QPS, memory (the index's own `memory_bytes()`) and build time.
`evaluate_grid` measures many: configurations that differ only in search knobs (params.py marks
them) share one build and pass the knobs per call. `choose` picks the cheapest configuration
that meets a recall floor and an optional p99 target; `check_recall_floor` refuses one that
does not, with the measured recall in the message.

Trained types (sq8, hnsw_sq8, ivf_*) carry their own recall gate that raises search knobs at
training time; the grid turns it off (recall_floor=0) so that each row measures the knobs it
names, and `index_config` turns it back on with the caller's floor when a choice is applied.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstack.errors import EmbedStackError, InvalidInput
from embedstack.index.base import MaintainedIndex
from embedstack.index.factory import INDEX_TYPES, create_index, validate_index_params
from embedstack.index.gate import recall_at_k
from embedstack.index.params import INDEX_PARAMS, TRAINED_TYPES
from embedstack.index.structures import (
    auto_leaves,
    auto_m,
    auto_nlist,
    train_min,
)

Candidate = tuple[str, dict[str, Any]]
GATE_PARAM = "recall_floor"  # the trained types' self-tuning gate (params.py)
HIDDEN_PARAMS = frozenset({GATE_PARAM})
EXACT_TYPES = frozenset({"exact", "flat"})
WARMUP_QUERIES = 5
LATENCY_ROUNDS = 2  # p50/p99 come from the round with the lower p99 (shared machines stall)
LATENCY_BUDGET_S = 5.0  # no second round once a configuration has been timed this long


@dataclass(frozen=True)
class Measurement:
    """One configuration measured on `n` base vectors and `queries` held-out queries."""

    index_type: str
    params: dict[str, Any]
    k: int
    n: int
    queries: int
    recall: float
    p50_ms: float
    p99_ms: float
    qps: float
    memory_bytes: int
    build_s: float
    knobs: dict[str, Any] = field(default_factory=dict)  # in effect after any self-tuning

    @property
    def bytes_per_vector(self) -> float:
        return self.memory_bytes / max(1, self.n)

    @property
    def label(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in HIDDEN_PARAMS}
        inner = " ".join(f"{k}={v}" for k, v in shown.items())
        return f"{self.index_type} {inner}".strip()

    def passes(self, recall_floor: float, p99_ms: float | None = None) -> bool:
        fast = p99_ms is None or self.p99_ms <= p99_ms
        return self.recall >= recall_floor and fast


@dataclass(frozen=True)
class Failure:
    """A candidate that could not be measured (missing backend, too few vectors, bad params)."""

    index_type: str
    params: dict[str, Any]
    reason: str


Outcome = Measurement | Failure


# -- ground truth ---------------------------------------------------------------------------------
def exact_neighbors(
    base_ids: np.ndarray, base_vectors: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> np.ndarray:
    """(q, k) ids of the true k nearest base vectors (-1 padded when the base has < k)."""
    exact = create_index("exact", base_vectors.shape[1], metric)
    exact.add(base_ids, base_vectors)
    return exact.search(queries, k)[1]


# -- measuring ------------------------------------------------------------------------------------
def _knob_keys(index_type: str) -> frozenset[str]:
    spec = INDEX_PARAMS.get(index_type)
    return frozenset(key for key, p in spec.items() if p.knob) if spec else frozenset()


def _build(
    index_type: str,
    params: dict[str, Any],
    dim: int,
    metric: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    require_trained: bool = True,
) -> tuple[MaintainedIndex, float]:
    index = create_index(index_type, dim, metric, params)
    start = time.perf_counter()
    index.add(ids, vectors)
    seconds = time.perf_counter() - start
    if require_trained and not index.trained:
        raise InvalidInput(
            f"{index_type} did not train on {len(ids)} vectors (it searches exactly until it has "
            "enough); measure it on more vectors"
        )
    return index, seconds


def _measure(
    index: MaintainedIndex,
    index_type: str,
    params: dict[str, Any],
    overrides: dict[str, Any],
    queries: np.ndarray,
    truth: np.ndarray,
    k: int,
    build_s: float,
    n: int,
) -> Measurement:
    search: Any = index.search  # knobs are keyword arguments beyond the protocol
    for row in queries[:WARMUP_QUERIES]:
        search(row[None, :], k, **overrides)
    rounds: list[np.ndarray] = []
    while len(rounds) < LATENCY_ROUNDS and sum(float(t.sum()) for t in rounds) < LATENCY_BUDGET_S:
        times = np.empty(len(queries))
        for i, row in enumerate(queries):
            start = time.perf_counter()
            search(row[None, :], k, **overrides)
            times[i] = time.perf_counter() - start
        rounds.append(times)
    times = min(rounds, key=lambda t: float(np.percentile(t, 99)))  # a stall hits one round
    start = time.perf_counter()
    _, found = search(queries, k, **overrides)
    batch_s = time.perf_counter() - start
    knobs = {**index.knobs, **overrides}
    return Measurement(
        index_type=index_type,
        params=dict(params),
        k=k,
        n=n,
        queries=len(queries),
        recall=recall_at_k(found, truth),
        p50_ms=float(np.percentile(times, 50) * 1e3),
        p99_ms=float(np.percentile(times, 99) * 1e3),
        qps=len(queries) / batch_s if batch_s > 0 else math.inf,
        memory_bytes=int(index.memory_bytes()),
        build_s=build_s,
        knobs=knobs,
    )


def evaluate(
    index_type: str,
    params: dict[str, Any],
    dim: int,
    metric: str,
    base_ids: np.ndarray,
    base_vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    truth: np.ndarray | None = None,
    require_trained: bool = True,
) -> Measurement:
    """Build `index_type` with `params` (as given: its self-tuning gate runs if they enable it)
    over the base and measure it with `queries`. `truth` (from exact_neighbors) may be passed
    to share it between calls. A trained type given too few vectors to train raises
    InvalidInput, unless `require_trained` is False (it is then measured as it serves: exactly)."""
    if truth is None:
        truth = exact_neighbors(base_ids, base_vectors, queries, k, metric)
    index, build_s = _build(
        index_type, params, dim, metric, base_ids, base_vectors, require_trained
    )
    return _measure(index, index_type, params, {}, queries, truth, k, build_s, len(base_ids))


def _build_key(index_type: str, params: dict[str, Any]) -> tuple[Any, ...]:
    """Candidates with equal keys share a build: knobs may differ, but not whether they are 0
    (a 0 knob means "auto" or "off", e.g. ivf_pq refine_factor=0 stores no float vectors)."""
    knobs = _knob_keys(index_type)
    items = sorted((key, (value == 0) if key in knobs else value) for key, value in params.items())
    return (index_type, tuple(items))


def evaluate_grid(
    candidates: Iterable[Candidate],
    dim: int,
    metric: str,
    base_ids: np.ndarray,
    base_vectors: np.ndarray,
    queries: np.ndarray,
    k: int,
    truth: np.ndarray | None = None,
) -> Iterator[Outcome]:
    """Measure every candidate, in the given order, yielding each outcome as it is ready.
    Consecutive candidates that differ only in nonzero knob values reuse one build."""
    if truth is None:
        truth = exact_neighbors(base_ids, base_vectors, queries, k, metric)
    built: tuple[tuple[Any, ...], MaintainedIndex, float] | None = None
    for index_type, params in candidates:
        key = _build_key(index_type, params)
        try:
            if built is None or built[0] != key:
                built = None  # free the previous index before building the next
                built = (key, *_build(index_type, params, dim, metric, base_ids, base_vectors))
            knobs = _knob_keys(index_type)
            overrides = {key_: v for key_, v in params.items() if key_ in knobs and v != 0}
            yield _measure(
                built[1],
                index_type,
                params,
                overrides,
                queries,
                truth,
                k,
                built[2],
                len(base_ids),
            )
        except Exception as exc:  # a broken candidate must not stop the grid
            if isinstance(exc, EmbedStackError):
                yield Failure(index_type, dict(params), exc.message)
            else:
                yield Failure(index_type, dict(params), f"{type(exc).__name__}: {exc}")


# -- the grid -------------------------------------------------------------------------------------
def _trains_on(index_type: str, point: dict[str, Any], n: int) -> bool:
    """Whether `n` vectors reach the family's training minimum (structures.train_min) with the
    point's params (defaults filled); untrained families always do."""
    if index_type not in TRAINED_TYPES:
        return True
    spec = INDEX_PARAMS[index_type]
    return n >= train_min(index_type, {**{k: p.default for k, p in spec.items()}, **point})


def _family_grid(index_type: str, n: int, dim: int) -> list[dict[str, Any]]:
    """A few parameter points for one family, sized to n, leaving out the points n is too small
    to train (a trained type below its training minimum would just search exactly)."""
    return [p for p in _family_points(index_type, n, dim) if _trains_on(index_type, p, n)]


def _family_points(index_type: str, n: int, dim: int) -> list[dict[str, Any]]:
    nlist = auto_nlist(n)
    sweep = sorted({max(1, nlist // 64), max(1, nlist // 16), max(1, nlist // 4)})
    if index_type in ("hnsw", "hnsw_sq8"):
        efs = (16, 32, 64, 128) if index_type == "hnsw" else (32, 64, 128)
        points = [{"M": 16, "ef_construction": 80, "ef_search": ef} for ef in efs]
        if n <= 20_000 and index_type == "hnsw":
            points += [{"M": 32, "ef_construction": 80, "ef_search": ef} for ef in (64, 128)]
        return points
    if index_type == "ivf_flat":
        return [{"nlist": 0, "nprobe": p} for p in sweep]
    if index_type == "ivf_pq":  # 8-bit codebooks need ~10k training vectors (train_min)
        pq = {"nlist": 0, "m": auto_m(dim), "nbits": 8}
        points = [{**pq, "refine_factor": 0, "nprobe": p} for p in sweep[1:]]
        if n <= 20_000:  # a float store makes it bigger than ivf_flat: a latency play only
            points.append({**pq, "refine_factor": 4, "nprobe": sweep[-1]})
        return points
    if index_type == "binary":
        return [{"M": 0, "rescore": r} for r in (4, 10)]
    if index_type == "scann":
        leaves = auto_leaves(n)
        return [{"leaves": 0, "leaves_to_search": max(1, leaves // f)} for f in (16, 4)]
    return [{}]


def candidate_grid(n: int, dim: int, types: Sequence[str] | None = None) -> list[Candidate]:
    """Candidate configurations for `n` base vectors of `dim`: every index family (quantized and
    not) with a few parameter points, grouped so knob sweeps share a build. Families whose
    training needs more vectors than `n` are left out; "exact" is the ground truth, not a
    candidate. A family this install cannot build (an unknown type, scann without its package)
    keeps only its first point, which `evaluate_grid` reports as a Failure with the reason."""
    chosen = [t for t in (types or INDEX_TYPES) if t != "exact"]
    out: list[Candidate] = []
    for index_type in chosen:
        gated = GATE_PARAM in INDEX_PARAMS.get(index_type, {})
        for point in _family_grid(index_type, n, dim):
            params = {**point, GATE_PARAM: 0} if gated else dict(point)
            out.append((index_type, params))
            try:
                validate_index_params(index_type, params)
            except InvalidInput:  # the family fails as a whole: one Failure row says why
                break
    return out


# -- choosing and gating --------------------------------------------------------------------------
def choose(
    measurements: Iterable[Outcome], recall_floor: float, p99_ms: float | None = None
) -> Measurement | None:
    """The cheapest passing configuration: least memory per vector, then lowest p99, then
    highest recall. None when nothing meets the floor (and the latency target, if given)."""
    passing = [
        m for m in measurements if isinstance(m, Measurement) and m.passes(recall_floor, p99_ms)
    ]
    if not passing:
        return None
    return min(passing, key=lambda m: (round(m.bytes_per_vector), m.p99_ms, -m.recall))


def index_config(measurement: Measurement, recall_floor: float | None = None) -> dict[str, Any]:
    """The `{"type": ..., **params}` body that applies a measured configuration. The trained
    types' own gate is set to `recall_floor`, so a retrain on more data keeps the floor."""
    params = dict(measurement.params)
    if GATE_PARAM in params and recall_floor is not None:
        params[GATE_PARAM] = recall_floor
    return {"type": measurement.index_type, **params}


def is_quantized(index_type: str) -> bool:
    """True for types that store compressed vectors (their recall is below exact search)."""
    return index_type not in EXACT_TYPES and (
        "sq" in index_type or "pq" in index_type or index_type in ("scann", "binary")
    )


def _holdout(n: int, sample_queries: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(base rows, query rows): queries are held out of the base when there are enough rows."""
    order = np.random.default_rng(seed).permutation(n)
    nq = min(sample_queries, n // 5)
    if nq < 1:
        return order, order[: max(1, min(sample_queries, n))]
    return np.sort(order[nq:]), order[:nq]


def check_recall_floor(
    index_type: str,
    params: dict[str, Any] | None,
    dim: int,
    metric: str,
    ids: np.ndarray,
    vectors: np.ndarray,
    k: int,
    floor: float,
    sample_queries: int = 200,
    seed: int = 0,
) -> Measurement:
    """Build the configuration over `vectors` less `sample_queries` held-out rows, measure
    recall@k of the held-out rows against exact search, and return the measurement; raise
    InvalidInput showing the measured recall when it is under `floor`. The index is measured as
    it would serve: with its own gate if `params` enable it, and exactly while a trained type
    has too few vectors to train (its gate checks again when it trains)."""
    ids = np.asarray(ids, dtype=np.int64)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if len(ids) == 0:
        raise InvalidInput("cannot check recall on an empty collection; add vectors first")
    base, rows = _holdout(len(ids), sample_queries, seed)
    full = dict(params or {})
    measured = evaluate(
        index_type,
        full,
        dim,
        metric,
        ids[base],
        vectors[base],
        vectors[rows],
        k,
        require_trained=False,
    )
    if measured.recall < floor:
        raise InvalidInput(
            f"{measured.label} reaches recall@{k} {measured.recall:.3f} on {measured.queries} "
            f"held-out queries over {measured.n} vectors, under the floor {floor:.3f}; raise its "
            "search parameters (ef_search, nprobe, refine_factor), use less quantization, or "
            "lower the floor"
        )
    return measured
