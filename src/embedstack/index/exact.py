"""Brute-force index in numpy: the reference every other backend is tested against."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embedstack.errors import InvalidInput
from embedstack.index.common import (
    MIN_CAPACITY,
    ReadWriteLock,
    as_ids,
    as_matrix,
    brute_force,
    check_dim_metric,
    check_k,
    read_meta,
    save_dir_atomically,
    save_npy,
    unique_first,
)


class ExactIndex:
    """Brute force over a growable float32 matrix. Removal swaps the last row into the hole."""

    def __init__(self, dim: int, metric: str) -> None:
        check_dim_metric(dim, metric)
        self._dim = dim
        self._metric = metric
        self._vecs = np.empty((0, dim), dtype=np.float32)
        self._ids = np.empty(0, dtype=np.int64)
        self._n = 0
        self._rows: dict[int, int] = {}
        self._lock = ReadWriteLock()

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    def count(self) -> int:
        return self._n

    # -- maintenance (base.MaintainedIndex): never trained, removal is physical -------------
    @property
    def trained(self) -> bool:
        return True

    @property
    def knobs(self) -> dict[str, int]:
        return {}

    @property
    def gate(self) -> dict[str, Any]:
        return {}

    def needs_retrain(self) -> bool:
        return False

    def retrained(self) -> ExactIndex:
        """Itself: there is nothing to train."""
        return self

    def tombstone_ratio(self) -> float:
        return 0.0

    def compacted(self) -> ExactIndex:
        """Itself: removal already frees the row."""
        return self

    def _resize(self, capacity: int) -> None:
        vecs = np.empty((capacity, self._dim), dtype=np.float32)
        ids = np.empty(capacity, dtype=np.int64)
        vecs[: self._n] = self._vecs[: self._n]
        ids[: self._n] = self._ids[: self._n]
        self._vecs, self._ids = vecs, ids

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = as_matrix(vectors, self._dim, "vectors")
        if len(ids) != len(vectors):
            raise InvalidInput(f"got {len(ids)} ids but {len(vectors)} vectors; pass one per id")
        keep = unique_first(ids)
        with self._lock.write():
            cand = ids[keep].tolist()
            keep = keep[np.fromiter((i not in self._rows for i in cand), bool, len(cand))]
            m = len(keep)
            if m == 0:
                return
            need = self._n + m
            if need > len(self._ids):
                self._resize(max(MIN_CAPACITY, need, 2 * len(self._ids)))
            self._vecs[self._n : need] = vectors[keep]
            self._ids[self._n : need] = ids[keep]
            for row, i in enumerate(ids[keep].tolist(), start=self._n):
                self._rows[i] = row
            self._n = need

    def remove(self, ids: np.ndarray) -> int:
        ids = as_ids(ids)
        removed = 0
        with self._lock.write():
            for i in np.unique(ids).tolist():
                row = self._rows.pop(i, None)
                if row is None:
                    continue
                last = self._n - 1
                if row != last:
                    moved = int(self._ids[last])
                    self._vecs[row] = self._vecs[last]
                    self._ids[row] = moved
                    self._rows[moved] = row
                self._n = last
                removed += 1
            cap = len(self._ids)
            if cap > MIN_CAPACITY and self._n < cap // 4:
                self._resize(max(MIN_CAPACITY, cap // 2))
        return removed

    def search(
        self, queries: np.ndarray, k: int, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        queries = as_matrix(queries, self._dim, "queries")
        allowed = None if allow is None else as_ids(allow, "allow")
        with self._lock.read():
            vecs, ids = self._vecs[: self._n], self._ids[: self._n]
            if allowed is not None:
                rows = np.flatnonzero(np.isin(ids, allowed))
                vecs, ids = vecs[rows], ids[rows]
            return brute_force(vecs, ids, queries, k, self._metric)

    def snapshot(self) -> tuple[np.ndarray, np.ndarray]:
        """Copies of (ids, vectors) of every live entry."""
        with self._lock.read():
            return self._ids[: self._n].copy(), self._vecs[: self._n].copy()

    def memory_bytes(self) -> int:
        cap = len(self._ids)
        return cap * (self._dim * 4 + 8) + len(self._rows) * 100

    def save(self, path: Path) -> None:
        ids, vecs = self.snapshot()
        meta = {
            "type": "exact",
            "params": {},
            "dim": self._dim,
            "metric": self._metric,
            "count": len(ids),
        }

        def write(tmp: Path) -> None:
            save_npy(tmp / "vectors.npy", vecs)
            save_npy(tmp / "ids.npy", ids)

        save_dir_atomically(path, meta, write)

    @classmethod
    def load(cls, path: Path) -> ExactIndex:
        path = Path(path)
        meta = read_meta(path)
        index = cls(int(meta["dim"]), str(meta["metric"]))
        vecs = np.load(path / "vectors.npy", allow_pickle=False)
        ids = np.load(path / "ids.npy", allow_pickle=False)
        if len(ids) != meta["count"] or len(vecs) != len(ids):
            raise InvalidInput(f"index at {path} is inconsistent (count mismatch); rebuild it")
        index.add(ids, vecs)
        return index
