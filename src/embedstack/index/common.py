"""Helpers every index backend shares: validation, padding, a read/write lock, atomic saves and
numpy brute force."""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from embedstack.errors import InvalidInput
from embedstack.fsutil import durable_file, write_dir_atomically, write_durably
from embedstack.types import METRICS

QUERY_BLOCK_ELEMS = 1 << 24  # cap on the (queries x rows) score block held at once
MIN_CAPACITY = 1024


class ReadWriteLock:
    """Many concurrent readers or one writer; waiting writers block new readers. Not reentrant.

    `read()`/`write()` are context managers; the hot search path uses the cheaper explicit
    `acquire_read()` / `release_read()` pair."""

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._cond = threading.Condition(self._mutex)
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    def acquire_read(self) -> None:
        with self._mutex:  # the plain lock (C), not the Condition's Python-level __enter__
            if not (self._writer or self._writers_waiting):
                self._readers += 1
                return
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1

    def release_read(self) -> None:
        with self._mutex:
            self._readers -= 1
            # only writers wait for the readers to drain (readers wait for writers only)
            if self._readers == 0 and self._writers_waiting:
                self._cond.notify_all()

    @contextmanager
    def read(self) -> Iterator[None]:
        self.acquire_read()
        try:
            yield
        finally:
            self.release_read()

    @contextmanager
    def write(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


def check_dim_metric(dim: int, metric: str) -> None:
    if isinstance(dim, bool) or not isinstance(dim, int) or not 1 <= dim <= 65536:
        raise InvalidInput(f"dim must be an integer in [1, 65536], got {dim!r}")
    if metric not in METRICS:
        raise InvalidInput(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")


def as_ids(ids: Any, name: str = "ids") -> np.ndarray:
    """A 1-D non-negative int64 array (a copy-free view where possible)."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidInput(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise InvalidInput(f"{name} must be integers, got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if arr.size and arr.min() < 0:
        raise InvalidInput(f"{name} must be >= 0 (-1 marks padding in results)")
    return arr


def as_matrix(x: Any, dim: int, name: str) -> np.ndarray:
    """A C-contiguous (n, dim) float32 array of finite values."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise InvalidInput(f"{name} must have shape (n, {dim}), got {arr.shape}")
    flat = arr.reshape(-1)
    # one dot product is finite iff every value is (unless it overflows: then check them all)
    if not math.isfinite(float(np.dot(flat, flat))) and not np.isfinite(arr).all():
        raise InvalidInput(f"{name} contain NaN or infinity; pass finite values")
    return arr


def unit_rows(x: Any) -> np.ndarray:
    """float32 rows scaled to unit L2 length (at the input's float precision), as cosine vectors
    are stored and searched; an all-zero row stays zero. The one normalization on the index side."""
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    return (arr / np.where(norms > 0, norms, 1)).astype(np.float32, copy=False)


def check_k(k: int) -> int:
    if type(k) is int and k >= 1:
        return k
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidInput(f"k must be a positive integer, got {k!r}")
    return int(k)


def pad_value(metric: str) -> float:
    """Score used with id -1: the worst possible value for the metric."""
    return float("inf") if metric == "l2" else float("-inf")


def empty_result(nq: int, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    scores = np.full((nq, k), pad_value(metric), dtype=np.float32)
    return scores, np.full((nq, k), -1, dtype=np.int64)


def save_npy(path: Path, arr: np.ndarray) -> None:
    with durable_file(path) as f:
        np.save(f, arr, allow_pickle=False)


def save_dir_atomically(path: Path, meta: dict[str, Any], write: Callable[[Path], None]) -> None:
    """Create index directory `path` atomically (fsutil.write_dir_atomically): the files `write`
    puts in it plus index.json. An existing `path` raises FileExistsError."""

    def fill(tmp: Path) -> None:
        write(tmp)
        write_durably(tmp / "index.json", json.dumps(meta).encode())

    write_dir_atomically(path, fill)


def read_meta(path: Path) -> dict[str, Any]:
    meta_path = Path(path) / "index.json"
    try:
        meta: dict[str, Any] = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read {meta_path}: {exc}; rebuild the index") from exc
    return meta


def top_k(scores: np.ndarray, k: int, metric: str) -> np.ndarray:
    """Column indices of the best k per row of `scores` (q, n), best first; k <= n."""
    key = scores if metric == "l2" else -scores
    if k < key.shape[1]:
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
    else:
        part = np.broadcast_to(np.arange(key.shape[1]), key.shape).copy()
    order = np.argsort(np.take_along_axis(key, part, axis=1), axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1)


def brute_force(
    vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over (n, dim) `vectors` labelled `ids`; pads with -1 when n < k."""
    nq = queries.shape[0]
    scores_out, ids_out = empty_result(nq, k, metric)
    n = vectors.shape[0]
    if n == 0 or nq == 0:
        return scores_out, ids_out
    kk = min(k, n)
    block = max(1, QUERY_BLOCK_ELEMS // n)
    for start in range(0, nq, block):
        q = queries[start : start + block]
        sims = q @ vectors.T
        if metric == "l2":
            # ranking key only: ||v||^2 - 2 q.v (||q||^2 is constant per row)
            sims = np.einsum("ij,ij->i", vectors, vectors)[None, :] - 2.0 * sims
        cols = top_k(sims, kk, metric)
        if metric == "l2":
            diff = vectors[cols] - q[:, None, :]
            dist = np.sqrt(np.einsum("qkd,qkd->qk", diff, diff))
            order = np.argsort(dist, axis=1, kind="stable")
            cols = np.take_along_axis(cols, order, axis=1)
            best = np.take_along_axis(dist, order, axis=1)
        else:
            best = np.take_along_axis(sims, cols, axis=1)
        scores_out[start : start + len(q), :kk] = best
        ids_out[start : start + len(q), :kk] = ids[cols]
    return scores_out, ids_out


def unique_first(ids: np.ndarray) -> np.ndarray:
    """Positions of the first occurrence of each id, in input order."""
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)


def check_int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"index param {key} must be an integer in [{low}, {high}]")
    if not low <= int(value) <= high:
        raise InvalidInput(f"index param {key}={value} is out of range; use [{low}, {high}]")
    return int(value)


def check_float(key: str, value: Any, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
        raise InvalidInput(f"index param {key} must be a number in [{low}, {high}]")
    if not low <= float(value) <= high:
        raise InvalidInput(f"index param {key}={value} is out of range; use [{low}, {high}]")
    return float(value)
