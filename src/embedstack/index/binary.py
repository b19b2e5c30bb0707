"""Binary quantization: one sign bit per dimension, Hamming search, float rescoring.

Each vector becomes `dim` bits (bit i = x_i > t_i, the thresholds t the per-dimension means of
the training vectors: centering keeps the bits balanced on embeddings whose dimensions carry an
offset). A faiss IndexBinaryFlat (M = 0) or IndexBinaryHNSW (M > 0) over the codes finds
k x `rescore` candidates by Hamming distance; those are re-scored exactly in the collection's
metric from a float16 copy of the vectors kept beside the codes, and the best k returned.
Bytes per vector: dim/8 for the codes + 2 dim for the float copy (816 for 384-d, against 1,536
for flat float32) + the graph when M > 0.

A trained family like sq8: it serves exactly (from the float copy) until `train_min` vectors,
then sets its thresholds, encodes and runs the recall gate (gate.py), which doubles `rescore`
(and ef_search for the graph) until the floor is met. Tombstones: an IdMap beside the structure,
excluded by a bitmap selector; allow filters use a selector too, or exact search when small.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedstack.errors import InvalidInput
from embedstack.fsutil import fsync_file
from embedstack.index.common import (
    ReadWriteLock,
    as_ids,
    as_matrix,
    brute_force,
    check_dim_metric,
    check_k,
    empty_result,
    read_meta,
    save_dir_atomically,
    save_npy,
    unique_first,
)
from embedstack.index.idmap import IdMap, bitmap_selector
from embedstack.index.params import check_knobs, validate_params
from embedstack.index.structures import MIN_TRAIN
from embedstack.index.training import TrainingState

FORMAT = 1
KNOB_CAPS = {"rescore": 256, "ef_search": 4096}
SMALL_ALLOW_MIN = 2000
SMALL_ALLOW_FRACTION = 0.02
STORE_DTYPE = np.float16
RESCORE_FLOATS = 1 << 24  # candidate floats re-scored at once (64 MB): queries per block


class BinaryIndex:
    def __init__(self, dim: int, metric: str, params: dict[str, Any] | None = None) -> None:
        check_dim_metric(dim, metric)
        self._dim = dim
        self._metric = metric
        self._params = validate_params("binary", params)
        self._lock = ReadWriteLock()
        self._map = IdMap()
        self._floats = np.empty((0, dim), dtype=STORE_DTYPE)  # by position (capacity grows)
        self._state = TrainingState.for_params("binary", self._params)
        self._state.knobs = self._default_knobs()
        self._thresholds: np.ndarray | None = None  # set by training
        self._codes: Any = None  # the faiss binary structure, once trained

    def _default_knobs(self) -> dict[str, int]:
        knobs = {"rescore": int(self._params["rescore"])}
        if self._params["M"]:
            knobs["ef_search"] = int(self._params["ef_search"])
        return knobs

    # -- properties -------------------------------------------------------------------------
    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def index_type(self) -> str:
        return "binary"

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def trained(self) -> bool:
        return self._codes is not None

    @property
    def knobs(self) -> dict[str, int]:
        return dict(self._state.knobs)

    @property
    def gate(self) -> dict[str, Any]:
        return dict(self._state.gate)

    def count(self) -> int:
        return self._map.live_count

    def tombstone_ratio(self) -> float:
        size = self._map.size
        return self._map.dead_count / size if size else 0.0

    def memory_bytes(self) -> int:
        with self._lock.read():
            n = self._map.size
            total = n * self._dim * np.dtype(STORE_DTYPE).itemsize + self._map.memory_bytes()
            if self._codes is not None:
                total += n * self._codes.code_size + self._dim * 4
                if self._params["M"]:
                    h = self._codes.hnsw
                    total += h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
            return int(total)

    def _train_min(self) -> int:
        return int(self._params["train_min"]) or MIN_TRAIN

    # -- codes ------------------------------------------------------------------------------
    def _encode(self, vectors: np.ndarray) -> np.ndarray:
        assert self._thresholds is not None
        return np.packbits(vectors > self._thresholds, axis=1)

    def _new_structure(self) -> Any:
        bits = 8 * ((self._dim + 7) // 8)
        if self._params["M"]:
            structure = faiss.IndexBinaryHNSW(bits, int(self._params["M"]))
            structure.hnsw.efConstruction = int(self._params["ef_construction"])
            return structure
        return faiss.IndexBinaryFlat(bits)

    def _stored(self, positions: np.ndarray) -> np.ndarray:
        return self._floats[positions].astype(np.float32)

    # -- writes -----------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = as_matrix(vectors, self._dim, "vectors")
        if len(ids) != len(vectors):
            raise InvalidInput(f"got {len(ids)} ids but {len(vectors)} vectors; pass one per id")
        keep = unique_first(ids)
        with self._lock.write():
            fresh = keep[self._map.find(ids[keep]) < 0]
            if len(fresh) == 0:
                return
            start = self._map.size
            need = start + len(fresh)
            if need > len(self._floats):
                grown = np.empty((max(need, 2 * len(self._floats), 1024), self._dim), STORE_DTYPE)
                grown[:start] = self._floats[:start]
                self._floats = grown
            self._floats[start:need] = vectors[fresh]
            self._map.append(ids[fresh])
            self._state.added += len(fresh)
            if self._codes is not None:
                self._codes.add(self._encode(vectors[fresh]))
            elif self.count() >= self._train_min():
                self._train()

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(as_ids(ids))
        with self._lock.write():
            return self._map.kill(ids)

    def _train(self) -> None:
        """Set thresholds from the live vectors, encode every position (caller holds the lock)."""
        n = self._map.size
        live = self._map.live_positions()
        vectors = self._stored(live)
        self._thresholds = vectors.mean(axis=0).astype(np.float32)
        structure = self._new_structure()
        structure.add(self._encode(self._stored(np.arange(n))))
        self._codes = structure
        self._state.trained_on(len(live), {"M": int(self._params["M"])}, self._default_knobs())
        self._state.run_gate(self._gate_search, vectors, self._map.ids_at(live), self._metric,
                             KNOB_CAPS)  # fmt: skip

    def _gate_search(self, queries: np.ndarray, k: int, knobs: dict[str, int]) -> np.ndarray:
        return self._search_codes(queries, k, knobs, self._map.dead_selector())[1]

    # -- search -----------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, allow: np.ndarray | None = None, **knobs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k per query. Keyword knobs (rescore, ef_search) override for this call only."""
        k = check_k(k)
        queries = as_matrix(queries, self._dim, "queries")
        over = check_knobs("binary", knobs) if knobs else {}
        allowed = None if allow is None else np.unique(as_ids(allow, "allow"))
        self._lock.acquire_read()
        try:
            if self._map.live_count == 0:
                return empty_result(len(queries), k, self._metric)
            merged = {**self._state.knobs, **over}
            if allowed is None:
                if self._codes is None:
                    live = self._map.live_positions()
                    return brute_force(
                        self._stored(live), self._map.ids_at(live), queries, k, self._metric
                    )
                return self._search_codes(queries, k, merged, self._map.dead_selector())
            positions = self._map.find(allowed)
            positions = positions[positions >= 0]
            if len(positions) == 0:
                return empty_result(len(queries), k, self._metric)
            small = max(SMALL_ALLOW_MIN, SMALL_ALLOW_FRACTION * self.count())
            if self._codes is None or len(positions) < small:
                ids = self._map.ids_at(positions)
                return brute_force(self._stored(positions), ids, queries, k, self._metric)
            mask = np.zeros(self._map.size, dtype=bool)
            mask[positions] = True
            sel, bits = bitmap_selector(mask)
            return self._search_codes(queries, k, merged, sel, bits)
        finally:
            self._lock.release_read()

    def _search_codes(
        self, queries: np.ndarray, k: int, knobs: dict[str, int], sel: Any, keep: Any = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hamming top k x rescore (positions admitted by `sel`), re-scored from the floats."""
        fetch = max(k, k * int(knobs["rescore"]))
        if self._params["M"]:
            params: Any = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]
            params.efSearch = max(int(knobs["ef_search"]), fetch)
        else:
            params = faiss.SearchParameters()
        if sel is not None:
            params.sel = sel
        omp = faiss.omp_get_max_threads() if len(queries) == 1 else 1
        if omp != 1:  # one query: OpenMP threads only spin (faiss_index.py does the same)
            faiss.omp_set_num_threads(1)
        try:
            _, cand = self._codes.search(self._encode(queries), fetch, params=params)
        finally:
            if omp != 1:
                faiss.omp_set_num_threads(omp)
        del keep  # the selector's bits stayed referenced through the search
        scores_out, ids_out = empty_result(len(queries), k, self._metric)
        block = max(1, RESCORE_FLOATS // (fetch * self._dim))
        for start in range(0, len(queries), block):
            rows = slice(start, start + block)
            self._rescore(queries[rows], cand[rows], k, scores_out[rows], ids_out[rows])
        return scores_out, ids_out

    def _rescore(
        self, queries: np.ndarray, cand: np.ndarray, k: int, scores: np.ndarray, ids: np.ndarray
    ) -> None:
        """Exact scores of the candidate positions (-1 = none) from the float copy, best k into
        `scores` / `ids` (pre-filled with padding), all queries of the block at once."""
        valid = cand >= 0
        vecs = self._floats[np.where(valid, cand, 0)].astype(np.float32)  # (q, fetch, dim)
        if self._metric == "l2":
            diff = vecs - queries[:, None, :]
            key = -np.einsum("qfd,qfd->qf", diff, diff)
        else:
            key = np.einsum("qfd,qd->qf", vecs, queries)
        key[~valid] = -np.inf
        kk = min(k, key.shape[1])
        top = np.argpartition(-key, kk - 1, axis=1)[:, :kk]
        order = np.argsort(-np.take_along_axis(key, top, axis=1), axis=1, kind="stable")
        top = np.take_along_axis(top, order, axis=1)
        best = np.take_along_axis(key, top, axis=1)
        found = np.isfinite(best)
        positions = np.take_along_axis(cand, top, axis=1)
        got = np.sqrt(np.maximum(-best, 0.0)) if self._metric == "l2" else best
        scores[:, :kk] = np.where(found, got, scores[:, :kk])
        ids[:, :kk] = np.where(found, self._map.ids_at(np.where(found, positions, 0)), -1)

    # -- rebuilds ---------------------------------------------------------------------------
    def needs_retrain(self) -> bool:
        return self._state.needs_retrain(self.count())

    def retrainer(self) -> Callable[[], BinaryIndex]:
        with self._lock.read():
            live = self._map.live_positions()
            vectors, ids = self._stored(live), self._map.ids_at(live)

        def train() -> BinaryIndex:
            fresh = BinaryIndex(self._dim, self._metric, self._params)
            if len(ids) == 0:
                return fresh
            with fresh._lock.write():
                fresh._floats = vectors.astype(STORE_DTYPE)
                fresh._map.append(ids)
                fresh._train()
            return fresh

        return train

    def retrained(self) -> BinaryIndex:
        return self.retrainer()()

    def compacted(self) -> BinaryIndex:
        """The live vectors only, same thresholds and knobs (codes re-encoded, not retrained)."""
        with self._lock.read():
            live = self._map.live_positions()
            fresh = BinaryIndex(self._dim, self._metric, self._params)
            fresh._floats = self._floats[live].copy()
            fresh._map = IdMap(self._map.ids_at(live))
            fresh._state = self._state.copy()
            fresh._thresholds = self._thresholds
        if fresh._thresholds is not None:
            fresh._codes = fresh._new_structure()
            fresh._codes.add(fresh._encode(fresh._stored(np.arange(len(live)))))
        return fresh

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with self._lock.read():
            ids, live = self._map.state()
            floats = self._floats[: len(ids)].copy()
            codes = self._codes
            meta = {
                "type": "binary",
                "format": FORMAT,
                "params": self._params,
                "dim": self._dim,
                "metric": self._metric,
                "count": self.count(),
                "trained": codes is not None,
                **self._state.meta(),
            }
            thresholds = self._thresholds

            def write(tmp: Path) -> None:
                save_npy(tmp / "floats.npy", floats)
                save_npy(tmp / "ids.npy", ids)
                save_npy(tmp / "live.npy", live)
                if codes is not None and thresholds is not None:
                    save_npy(tmp / "thresholds.npy", thresholds)
                    faiss.write_index_binary(codes, str(tmp / "codes.faiss"))
                    fsync_file(tmp / "codes.faiss")

            save_dir_atomically(path, meta, write)

    @classmethod
    def load(cls, path: Path) -> BinaryIndex:
        path = Path(path)
        meta = read_meta(path)
        if meta.get("format") != FORMAT:
            raise InvalidInput(f"index at {path} has another format; rebuild it from the store")
        index = cls(int(meta["dim"]), str(meta["metric"]), meta["params"])
        index._floats = np.load(path / "floats.npy", allow_pickle=False)
        ids = np.load(path / "ids.npy", allow_pickle=False)
        live = np.load(path / "live.npy", allow_pickle=False)
        index._map = IdMap(ids, live)
        if len(index._floats) != len(ids) or index._map.live_count != meta["count"]:
            raise InvalidInput(f"index at {path} is inconsistent; rebuild it")
        if meta["trained"]:
            index._thresholds = np.load(path / "thresholds.npy", allow_pickle=False)
            index._codes = faiss.read_index_binary(str(path / "codes.faiss"))
            if index._codes.ntotal != len(ids):
                raise InvalidInput(f"index at {path} does not match its index.json; rebuild it")
        index._state.load(meta)
        return index
