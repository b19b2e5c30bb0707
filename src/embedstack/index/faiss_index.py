"""faiss-backed index: "flat" (exact) or "hnsw" (graph), both under IndexIDMap2 for our own ids.

HNSW deletes are tombstones, excluded at search time with an IDSelector (faiss translates
selector ids through IndexIDMap2). A tombstoned id cannot be re-added to an HNSW index until it
has been compacted: our callers never re-use ids, so `add` raises InvalidInput instead.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedstack.errors import InvalidInput
from embedstack.index.exact import (
    ReadWriteLock,
    as_ids,
    as_matrix,
    brute_force,
    check_dim_metric,
    check_k,
    empty_result,
    fsync_file,
    pad_value,
    read_meta,
    save_dir_atomically,
    unique_first,
)

FAISS_TYPES: tuple[str, ...] = ("flat", "hnsw")
HNSW_DEFAULTS: dict[str, int] = {"M": 32, "ef_construction": 200, "ef_search": 64}
HNSW_RANGES: dict[str, tuple[int, int]] = {
    "M": (4, 256),
    "ef_construction": (8, 8192),
    "ef_search": (1, 32768),
}
SMALL_ALLOW_MIN = 2000  # allow sets smaller than max(this, 2% of count) are searched exactly
SMALL_ALLOW_FRACTION = 0.02
IDMAP_BYTES_PER_ID = 8 + 48  # id_map entry + rev_map hash node
ADD_BATCH = 65536


def _check_int(key: str, value: Any, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise InvalidInput(f"index param {key} must be an integer in [{low}, {high}]")
    if not low <= int(value) <= high:
        raise InvalidInput(f"index param {key}={value} is out of range; use [{low}, {high}]")
    return int(value)


def validate_faiss_params(index_type: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Fill defaults and reject unknown keys or out-of-range values."""
    params = dict(params or {})
    allowed = HNSW_DEFAULTS if index_type == "hnsw" else {}
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) or "none"
        raise InvalidInput(
            f"unknown index param(s) {', '.join(unknown)} for {index_type!r}; valid: {valid}"
        )
    out = {**allowed, **params}
    return {key: _check_int(key, out[key], *HNSW_RANGES[key]) for key in allowed}


def _contains(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Boolean mask: which of `ids` are in the sorted array `sorted_ids`."""
    if len(sorted_ids) == 0:
        return np.zeros(len(ids), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    return np.asarray(sorted_ids[pos] == ids)


class FaissIndex:
    """VectorIndex over faiss IndexFlat* or IndexHNSWFlat wrapped in IndexIDMap2."""

    def __init__(
        self,
        dim: int,
        metric: str,
        index_type: str = "hnsw",
        params: dict[str, Any] | None = None,
    ) -> None:
        check_dim_metric(dim, metric)
        if index_type not in FAISS_TYPES:
            raise InvalidInput(f"faiss index_type must be one of {', '.join(FAISS_TYPES)}")
        self._dim = dim
        self._metric = metric
        self._type = index_type
        self._params = validate_faiss_params(index_type, params)
        self._base, self._index = self._build()
        self._ids = np.empty(0, dtype=np.int64)  # sorted; every id in faiss, tombstones included
        self._dead = np.empty(0, dtype=np.int64)  # sorted tombstones (hnsw only)
        self._dead_sel: tuple[Any, Any] | None = None  # (IDSelectorNot, its IDSelectorBatch)
        self._lock = ReadWriteLock()

    def _build(self) -> tuple[Any, Any]:
        ip = self._metric != "l2"
        base: Any
        if self._type == "flat":
            base = faiss.IndexFlatIP(self._dim) if ip else faiss.IndexFlatL2(self._dim)
        else:
            faiss_metric = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
            base = faiss.IndexHNSWFlat(self._dim, self._params["M"], faiss_metric)
            base.hnsw.efConstruction = self._params["ef_construction"]
        return base, faiss.IndexIDMap2(base)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def index_type(self) -> str:
        return self._type

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    def count(self) -> int:
        return len(self._ids) - len(self._dead)

    def tombstone_ratio(self) -> float:
        """Fraction of stored vectors that are tombstones (0.0 for flat or empty)."""
        total = len(self._ids)
        return len(self._dead) / total if total else 0.0

    def _set_dead(self, dead: np.ndarray) -> None:
        self._dead = dead
        if len(dead):
            batch = faiss.IDSelectorBatch(dead)
            self._dead_sel = (faiss.IDSelectorNot(batch), batch)
        else:
            self._dead_sel = None

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = as_matrix(vectors, self._dim, "vectors")
        if len(ids) != len(vectors):
            raise InvalidInput(f"got {len(ids)} ids but {len(vectors)} vectors; pass one per id")
        keep = unique_first(ids)
        new_ids, new_vecs = ids[keep], vectors[keep]
        with self._lock.write():
            reused = _contains(self._dead, new_ids)
            if reused.any():
                raise InvalidInput(
                    f"ids {new_ids[reused][:5].tolist()} were removed from this HNSW index and "
                    "cannot be re-added before compaction; use new ids"
                )
            fresh = ~_contains(self._ids, new_ids)
            new_ids, new_vecs = new_ids[fresh], new_vecs[fresh]
            if len(new_ids) == 0:
                return
            self._index.add_with_ids(np.ascontiguousarray(new_vecs), new_ids)
            merged = np.concatenate([self._ids, new_ids])
            merged.sort()
            self._ids = merged

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(as_ids(ids))
        with self._lock.write():
            targets = ids[_contains(self._ids, ids) & ~_contains(self._dead, ids)]
            if len(targets) == 0:
                return 0
            if self._type == "flat":
                self._index.remove_ids(targets)
                self._ids = np.setdiff1d(self._ids, targets, assume_unique=True)
            else:
                self._set_dead(np.union1d(self._dead, targets))
            return len(targets)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        allow: np.ndarray | None = None,
        *,
        ef_search: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        k = check_k(k)
        queries = as_matrix(queries, self._dim, "queries")
        ef = self._params.get("ef_search", 0) if ef_search is None else ef_search
        if self._type == "hnsw":
            ef = _check_int("ef_search", ef, *HNSW_RANGES["ef_search"])
        allowed = None if allow is None else np.unique(as_ids(allow, "allow"))
        with self._lock.read():
            if self.count() == 0:
                return empty_result(len(queries), k, self._metric)
            sel: Any = self._dead_sel[0] if self._dead_sel else None
            if allowed is not None:
                allowed = allowed[_contains(self._ids, allowed) & ~_contains(self._dead, allowed)]
                small = max(SMALL_ALLOW_MIN, SMALL_ALLOW_FRACTION * self.count())
                if len(allowed) == 0:
                    return empty_result(len(queries), k, self._metric)
                if len(allowed) < small:  # HNSW recall collapses under selective filters
                    vecs = self._index.reconstruct_batch(allowed)
                    return brute_force(vecs, allowed, queries, k, self._metric)
                sel = faiss.IDSelectorBatch(allowed)
            kwargs: dict[str, Any] = {} if sel is None else {"sel": sel}
            params: Any = None
            if self._type == "hnsw":
                params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing in stubs
                    efSearch=max(ef, k), **kwargs
                )
            elif kwargs:
                params = faiss.SearchParameters(**kwargs)
            scores, labels = self._index.search(queries, k, params=params)
        if self._metric == "l2":
            scores = np.sqrt(np.maximum(scores, 0.0))
        scores[labels < 0] = pad_value(self._metric)
        return scores.astype(np.float32, copy=False), labels.astype(np.int64, copy=False)

    def memory_bytes(self) -> int:
        total = len(self._ids)
        per_vec = self._dim * 4 + IDMAP_BYTES_PER_ID + 8
        if self._type == "hnsw":
            per_vec += int(self._params["M"] * 2 * 4 * 1.1) + 16  # links + levels/offsets
        return total * per_vec + len(self._dead) * 8

    def _live_ids(self) -> np.ndarray:
        return np.setdiff1d(self._ids, self._dead, assume_unique=True)

    def compacted(self) -> FaissIndex:
        """A fresh index of the live vectors only. Mutations made after the snapshot are not in it:
        block writes (or replay them) between calling this and swapping the reference."""
        with self._lock.read():
            live = self._live_ids()
            vecs = self._index.reconstruct_batch(live) if len(live) else None
        fresh = FaissIndex(self._dim, self._metric, self._type, self._params)
        if vecs is not None:
            for start in range(0, len(live), ADD_BATCH):
                stop = start + ADD_BATCH
                fresh.add(live[start:stop], vecs[start:stop])
        return fresh

    def save(self, path: Path) -> None:
        with self._lock.read():
            meta = {
                "type": self._type,
                "params": self._params,
                "dim": self._dim,
                "metric": self._metric,
                "count": self.count(),
                "tombstones": self._dead.tolist(),
            }

            def write(tmp: Path) -> None:
                faiss.write_index(self._index, str(tmp / "index.faiss"))
                fsync_file(tmp / "index.faiss")

            save_dir_atomically(path, meta, write)

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        path = Path(path)
        meta = read_meta(path)
        index = cls(int(meta["dim"]), str(meta["metric"]), str(meta["type"]), meta["params"])
        loaded = faiss.read_index(str(path / "index.faiss"))
        if not isinstance(loaded, faiss.IndexIDMap2) or loaded.d != index.dim:
            raise InvalidInput(f"index at {path} does not match its index.json; rebuild it")
        index._base, index._index = None, loaded
        index._ids = np.sort(faiss.vector_to_array(loaded.id_map).astype(np.int64))
        index._set_dead(np.unique(np.asarray(meta.get("tombstones", []), dtype=np.int64)))
        if index.count() != meta["count"] or not _contains(index._ids, index._dead).all():
            raise InvalidInput(f"index at {path} is inconsistent (count mismatch); rebuild it")
        return index
