"""One VectorIndex over every faiss family: flat, hnsw, hnsw_sq8, sq8, ivf_flat, ivf_pq.

The faiss structure stores positions; an IdMap beside it holds our ids and tombstones (see
idmap.py). Types that need training (sq8, hnsw_sq8, ivf_*) start as an exact IndexFlat and train
automatically inside the `add` that brings the live count to the type's training threshold; the
recall gate (gate.py) then measures the trained index and raises its search knobs to the floor.

Writers (add, remove, the training step) hold the write lock; searches share the read lock.
`compacted()` and `retrained()` only read: they return a new index for the caller to swap in.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from embedstack.errors import InvalidInput
from embedstack.fsutil import fsync_file
from embedstack.index import structures as st
from embedstack.index.common import (
    ReadWriteLock,
    as_ids,
    as_matrix,
    brute_force,
    check_dim_metric,
    check_k,
    empty_result,
    pad_value,
    read_meta,
    save_dir_atomically,
    save_npy,
    unique_first,
)
from embedstack.index.idmap import IdMap, bitmap_selector
from embedstack.index.params import INDEX_PARAMS, TRAINED_TYPES, check_knobs, validate_params
from embedstack.index.training import TrainingState

_swig_ptr = faiss.swig_ptr
_omp_get_max_threads = faiss.omp_get_max_threads
_omp_set_num_threads = faiss.omp_set_num_threads
_norm_sqr = faiss.fvec_norm_L2sqr


def _as_queries(x: Any, dim: int) -> np.ndarray:
    """`as_matrix` for the search path. The finiteness check is one faiss SIMD pass (the sum of
    squares is finite iff every value is, unless it overflows: then numpy checks each value);
    numpy's dot costs more than a small search's own work on one query."""
    arr = np.ascontiguousarray(x, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[1] != dim or not arr.size:
        return as_matrix(arr, dim, "queries")
    if not math.isfinite(_norm_sqr(_swig_ptr(arr), arr.size)) and not np.isfinite(arr).all():
        raise InvalidInput("queries contain NaN or infinity; pass finite values")
    return arr


FAISS_TYPES: tuple[str, ...] = ("flat", "hnsw", "hnsw_sq8", "sq8", "ivf_flat", "ivf_pq")
# filtered searches (an allow list or a mask): admitted sets up to max(this, this share of the
# live vectors) are scanned exactly; larger ones go through the index with a bitmap selector,
# efSearch widened up to FILTER_EF_CAP
SMALL_ALLOW_MIN = 2000
SMALL_ALLOW_FRACTION = 0.02
FILTER_EF_CAP = 4096
ADD_BATCH = 65536
FORMAT = 2
KNOB_CAPS = {"ef_search": 4096, "refine_factor": 64}
EXACT_SLICE = 1 << 16  # positions an exact scan covers per hold of the read lock


class FaissIndex:
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
        self._params = validate_params(index_type, params)
        st.check_shape(index_type, self._params, dim)
        self._lock = ReadWriteLock()
        self._map = IdMap()
        self._state = TrainingState.for_params(index_type, self._params)
        self._state.knobs = self._default_knobs()
        # search parameters by k (this index's knobs) or (k, knobs), cleared by every write
        self._cache: dict[Any, tuple[Any, Any]] = {}
        if index_type in TRAINED_TYPES:
            self._faiss: Any = faiss.index_factory(dim, "Flat", st.faiss_metric(metric))
            self._trained = False
        else:
            self._state.shape = st.resolve(index_type, self._params, dim, 0)
            self._faiss = st.build(index_type, self._state.shape, self._params, dim, metric)
            self._trained = True
        self._template = st.serialize(self._faiss)

    def _default_knobs(self) -> dict[str, int]:
        spec = INDEX_PARAMS[self._type]
        knobs = {key: int(self._params[key]) for key, p in spec.items() if p.knob}
        if knobs.get("refine_factor") == 0:
            del knobs["refine_factor"]
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
        return self._type

    @property
    def params(self) -> dict[str, Any]:
        return dict(self._params)

    @property
    def trained(self) -> bool:
        """False while a trained type still serves exactly from its buffer."""
        return self._trained

    @property
    def knobs(self) -> dict[str, int]:
        """Search knobs in effect (the configured ones, raised by the recall gate if needed)."""
        return dict(self._state.knobs)

    @property
    def gate(self) -> dict[str, Any]:
        """The recall gate's last result: floor, recall, knobs, passed ({} if it never ran)."""
        return dict(self._state.gate)

    def count(self) -> int:
        return self._map.live_count

    def tombstone_ratio(self) -> float:
        """Fraction of stored positions that are tombstones (0.0 when empty)."""
        size = self._map.size
        return self._map.dead_count / size if size else 0.0

    def memory_bytes(self) -> int:
        with self._lock.read():
            return st.memory_bytes(self._faiss) + self._map.memory_bytes() + len(self._template)

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
            for start in range(0, len(fresh), ADD_BATCH):
                rows = fresh[start : start + ADD_BATCH]
                self._faiss.add(np.ascontiguousarray(vectors[rows]))
                self._map.append(ids[rows])
            self._cache.clear()
            self._state.added += len(fresh)
            if not self._trained and self.count() >= st.train_min(self._type, self._params):
                self._train()

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(as_ids(ids))
        with self._lock.write():
            removed = self._map.kill(ids)
            if removed:
                self._cache.clear()
            return removed

    def _train(self, vectors: np.ndarray | None = None, ids: np.ndarray | None = None) -> None:
        """Replace the exact buffer with the trained structure (caller holds the write lock)."""
        if vectors is None or ids is None:
            live = self._map.live_positions()
            vectors, ids = st.vectors_at(self._faiss, live), self._map.ids_at(live)
            assert vectors is not None  # the untrained buffer is an IndexFlat
        n = len(ids)
        shape = st.resolve(self._type, self._params, self._dim, n)
        structure = st.build(self._type, shape, self._params, self._dim, self._metric)
        sample = np.random.default_rng(0).permutation(n)[: st.TRAIN_SAMPLE_MAX]
        structure.train(np.ascontiguousarray(vectors[np.sort(sample)]))
        template = st.serialize(structure)
        for start in range(0, n, ADD_BATCH):
            structure.add(np.ascontiguousarray(vectors[start : start + ADD_BATCH]))
        self._faiss, self._template, self._map = structure, template, IdMap(ids)
        self._trained = True
        self._state.trained_on(n, shape, self._default_knobs())
        self._cache.clear()
        self._state.run_gate(self._gate_search, vectors, ids, self._metric, self.knob_caps())
        self._cache.clear()

    def knob_caps(self) -> dict[str, int]:
        """How far the recall gates may raise each knob."""
        return {**KNOB_CAPS, "nprobe": self._state.shape.get("nlist", 1)}

    def use_knobs(self, knobs: dict[str, int]) -> None:
        """Serve with these search knobs from now on (the online recall check re-tunes them);
        they are saved with the next snapshot, and a retrain runs its own gate again."""
        given = check_knobs(self._type, knobs)
        with self._lock.write():
            self._state.knobs = {**self._state.knobs, **given}
            self._cache.clear()

    def _gate_search(self, queries: np.ndarray, k: int, knobs: dict[str, int]) -> np.ndarray:
        return self._search_unlocked(queries, k, knobs)[1]

    # -- search -----------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, allow: np.ndarray | None = None, **knobs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k per query. Keyword knobs (ef_search, nprobe, refine_factor: see params.py)
        override this index's settings for this call only.

        The common call (no allow list, no knob overrides) takes a lean path: cached faiss
        SearchParameters (tombstone selector inside only when something is dead), outputs
        allocated here and filled by the structure's search_c, ids mapped in one take. A single
        query runs on one OpenMP thread: from a thread pool's threads faiss would otherwise fork
        a team per call for flat scans and IVF coarse quantizers (see bench/search_overhead.py)."""
        k = check_k(k)
        queries = _as_queries(queries, self._dim)
        nq = len(queries)
        omp = _omp_get_max_threads() if nq == 1 else 1
        if omp != 1:
            _omp_set_num_threads(1)  # a per-thread setting: restored below
        try:
            if knobs or allow is not None:
                return self._search_general(queries, k, allow, knobs)
            self._lock.acquire_read()
            try:
                if not self._map.live_count:
                    return empty_result(nq, k, self._metric)
                params = self._cache.get(k)
                if params is None:
                    params = self._params_for(k, k, None)
                scores = np.empty((nq, k), np.float32)
                labels = np.empty((nq, k), np.int64)
                self._faiss.search_c(
                    nq, _swig_ptr(queries), k, _swig_ptr(scores), _swig_ptr(labels), params[0]
                )
                return self._finish(scores, labels)
            finally:
                self._lock.release_read()
        finally:
            if omp != 1:
                _omp_set_num_threads(omp)

    def _search_general(
        self, queries: np.ndarray, k: int, allow: np.ndarray | None, knobs: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        over = check_knobs(self._type, knobs) if knobs else {}
        if "refine_factor" in over and "refine_factor" not in self._state.knobs:
            raise InvalidInput("this ivf_pq index stores no float vectors (refine_factor=0)")
        allowed = None if allow is None else np.unique(as_ids(allow, "allow"))
        self._lock.acquire_read()
        try:
            if self._map.live_count == 0:
                return empty_result(len(queries), k, self._metric)
            if allowed is None:
                merged = {**self._state.knobs, **over} if over else None
                return self._search_unlocked(queries, k, merged)
            return self._search_allowed(queries, k, allowed, {**self._state.knobs, **over})
        finally:
            self._lock.release_read()

    def _params_for(
        self, key: Any, k: int, knobs: dict[str, int] | None
    ) -> tuple[Any, tuple[Any, ...]]:
        """SearchParameters for `knobs` (None: this index's), with the tombstone selector, cached
        until the next write (the selector changes with every remove)."""
        if len(self._cache) > 64:  # many distinct per-call knobs: start over
            self._cache.clear()
        sel = self._map.dead_selector()
        params = st.search_params(self._type, self._trained, knobs or self._state.knobs, k, sel)
        self._cache[key] = params
        return params

    def _search_unlocked(
        self, queries: np.ndarray, k: int, knobs: dict[str, int] | None
    ) -> tuple[np.ndarray, np.ndarray]:
        key = (k, tuple(sorted(knobs.items()))) if knobs else k
        cached = self._cache.get(key)
        if cached is None:
            cached = self._params_for(key, k, knobs)
        return self._finish(*self._faiss.search(queries, k, params=cached[0]))

    def _finish(self, scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """faiss distances and positions -> our scores and ids (-1 with the metric's worst score
        where fewer than k were found). faiss sorts its padding last in each row, so the last
        column tells whether any row is padded (one scalar read for a single query)."""
        if self._metric == "l2":
            np.sqrt(np.maximum(scores, 0.0, out=scores), out=scores)
        rows = len(labels)
        if rows and (labels.item(-1) < 0 if rows == 1 else labels[:, -1].min() < 0):
            scores[labels < 0] = pad_value(self._metric)
        return scores, self._map.to_ids(labels)

    def _search_allowed(
        self, queries: np.ndarray, k: int, allowed: np.ndarray, knobs: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        positions = self._map.find(allowed)
        admitted = np.zeros(self._map.size, bool)
        admitted[positions[positions >= 0]] = True
        return self._search_admitted(queries, k, admitted, knobs)

    def exact_search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray] | None:
        """Exact best k over this index's own float vectors (one thread), or None when it keeps
        only codes: the truth online recall compares with, without a copy of every vector.

        Scanned EXACT_SLICE positions at a time, the read lock released between slices: a
        writer (and the queries queued behind it) waits for one slice, not for a scan of the
        whole index however slowly this low-priority check runs. Vectors added meanwhile may
        be seen or not; the truth is of the index as the scan went."""
        queries = _as_queries(queries, self._dim)
        metric = st.faiss_metric(self._metric)
        worst = -np.inf if metric == faiss.METRIC_INNER_PRODUCT else np.inf
        scores: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        omp = _omp_get_max_threads()
        _omp_set_num_threads(1)
        try:
            start = 0
            while True:
                with self._lock.read():
                    store = st.float_store(self._faiss)
                    if store is None:
                        return None
                    if not self._map.live_count:
                        return empty_result(len(queries), k, self._metric)
                    n = int(store.ntotal)
                    if start >= n:
                        break
                    end = min(n, start + EXACT_SLICE)
                    xb = faiss.rev_swig_ptr(store.get_xb(), n * self._dim).reshape(n, self._dim)
                    live = self._map.live_flags()[start:end]
                    want = min(end - start, k + len(live) - int(np.count_nonzero(live)))
                    d, i = faiss.knn(queries, xb[start:end], want, metric=metric)
                dead = ~live[i]
                d[dead], i[dead] = worst, -1 - start
                scores.append(d)
                labels.append(i + start)
                start = end
        finally:
            _omp_set_num_threads(omp)
        d, i = np.concatenate(scores, axis=1), np.concatenate(labels, axis=1)
        order = np.argsort(-d if worst < 0 else d, axis=1, kind="stable")[:, :k]
        d, i = np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
        if d.shape[1] < k:  # fewer live vectors than k: padded as a faiss search pads
            pad = k - d.shape[1]
            d = np.pad(d, ((0, 0), (0, pad)), constant_values=worst)
            i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        with self._lock.read():
            return self._finish(np.ascontiguousarray(d, np.float32), np.ascontiguousarray(i))

    # -- positions: metadata filters evaluated by position (index/attributes.py) ------------
    @property
    def size(self) -> int:
        """Positions in use (removed ones included); positions only grow until a swap."""
        return self._map.size

    def labels(self, start: int = 0) -> np.ndarray:
        """The ids at positions start..size-1 (a copy)."""
        with self._lock.read():
            return self._map.ids_at(np.arange(start, self._map.size, dtype=np.int64))

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """Positions of live `ids`, -1 where absent or removed."""
        with self._lock.read():
            return self._map.find(as_ids(ids))

    def search_mask(
        self, queries: np.ndarray, k: int, mask: np.ndarray, **knobs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k per query among the positions where bool `mask` is True (positions past its
        end are not admitted): what a metadata filter admits. Chosen by how many it admits:
        an exact scan of just those when few (a graph or IVF search loses recall when most of
        what it visits is filtered out), else this index's search with a bitmap selector and
        efSearch / nprobe widened by the inverse of the admitted share (the filtered search
        visits about as many admitted vectors as an unfiltered one visits in all)."""
        k = check_k(k)
        queries = _as_queries(queries, self._dim)
        over = check_knobs(self._type, knobs) if knobs else {}
        omp = _omp_get_max_threads() if len(queries) == 1 else 1
        if omp != 1:
            _omp_set_num_threads(1)
        self._lock.acquire_read()
        try:
            live = self._map.live_flags()
            admitted = np.zeros(len(live), bool)
            m = min(len(mask), len(live))
            np.logical_and(mask[:m], live[:m], out=admitted[:m])
            return self._search_admitted(queries, k, admitted, {**self._state.knobs, **over})
        finally:
            self._lock.release_read()
            if omp != 1:
                _omp_set_num_threads(omp)

    def _search_admitted(
        self, queries: np.ndarray, k: int, admitted: np.ndarray, knobs: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        count = int(np.count_nonzero(admitted))
        if count == 0:
            return empty_result(len(queries), k, self._metric)
        live = self.count()
        if count < max(SMALL_ALLOW_MIN, SMALL_ALLOW_FRACTION * live):
            positions = np.flatnonzero(admitted)
            vecs = st.vectors_at(self._faiss, positions)
            if vecs is not None:
                return brute_force(vecs, self._map.ids_at(positions), queries, k, self._metric)
        sel, _bits = bitmap_selector(admitted)
        widen = live / count
        if "ef_search" in knobs and self._trained:
            ef = int(min(FILTER_EF_CAP, math.ceil(knobs["ef_search"] * widen)))
            knobs = {**knobs, "ef_search": max(ef, knobs["ef_search"])}
        if "nprobe" in knobs:  # scan as many admitted candidates as an unfiltered search would
            nprobe = int(min(self._state.shape["nlist"], knobs["nprobe"] * widen))
            knobs = {**knobs, "nprobe": nprobe}
        params, _refs = st.search_params(self._type, self._trained, knobs, k, sel)
        return self._finish(*self._faiss.search(queries, k, params=params))

    # -- rebuilds ---------------------------------------------------------------------------
    def needs_retrain(self) -> bool:
        """True once a trained index has grown past retrain_growth x the size it trained on, or
        has taken in more new vectors than that since training (TrainingState.needs_retrain)."""
        return self._state.needs_retrain(self.count())

    def retrainer(self) -> Callable[[], FaissIndex]:
        """Snapshot the live vectors now (cheap: one copy, under the read lock) and return a
        function that trains a new index on them (slow: run it off the write path).

        The new index has the same type and params, auto params (nlist) re-resolved for the
        current size, and is re-gated. Writes made after this call are not in it: replay them
        before swapping it in. IVF-PQ without a float store (refine_factor=0) trains on decoded
        PQ vectors."""
        with self._lock.read():
            live = self._map.live_positions()
            vectors = st.all_vectors(self._faiss)[live] if len(live) else None
            ids = self._map.ids_at(live)

        def train() -> FaissIndex:
            fresh = FaissIndex(self._dim, self._metric, self._type, self._params)
            if vectors is None:
                return fresh
            if self._type not in TRAINED_TYPES:
                fresh.add(ids, vectors)
                return fresh
            with fresh._lock.write():
                fresh._faiss.add(vectors)
                fresh._map.append(ids)
                fresh._train(vectors, ids)
            return fresh

        return train

    def retrained(self) -> FaissIndex:
        """`retrainer()()`: snapshot and train in one call."""
        return self.retrainer()()

    def compacted(self) -> FaissIndex:
        """A new index of the live vectors only, same trained quantizers and knobs. IVF codes are
        copied under the read lock; graph and flat types copy their vectors out and re-add them
        after releasing it, so searches continue meanwhile. Mutations made after the snapshot are
        not in the result: block writes (or replay them) until it is swapped in."""
        with self._lock.read():
            live = self._map.live_positions()
            idmap = IdMap(self._map.ids_at(live))
            if st.is_ivf(self._faiss):
                return self._clone_with(st.compact_ivf(self._faiss, self._template, live), idmap)
            vectors = st.vectors_at(self._faiss, live)
        assert vectors is not None  # every non-IVF structure can reconstruct
        return self._clone_with(st.rebuilt(self._template, vectors), idmap)

    def _clone_with(self, structure: Any, idmap: IdMap) -> FaissIndex:
        fresh = FaissIndex(self._dim, self._metric, self._type, self._params)
        fresh._faiss, fresh._map, fresh._template = structure, idmap, self._template
        fresh._trained, fresh._state = self._trained, self._state.copy()
        return fresh

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with self._lock.read():
            ids, live = self._map.state()
            meta = {
                "type": self._type,
                "format": FORMAT,
                "params": self._params,
                "dim": self._dim,
                "metric": self._metric,
                "count": self.count(),
                "trained": self._trained,
                **self._state.meta(),
            }

            def write(tmp: Path) -> None:
                faiss.write_index(self._faiss, str(tmp / "index.faiss"))
                fsync_file(tmp / "index.faiss")
                save_npy(tmp / "template.npy", np.frombuffer(self._template, dtype=np.uint8))
                save_npy(tmp / "ids.npy", ids)
                save_npy(tmp / "live.npy", live)

            save_dir_atomically(path, meta, write)

    @classmethod
    def load(cls, path: Path) -> FaissIndex:
        path = Path(path)
        meta = read_meta(path)
        if meta.get("format") != FORMAT:
            raise InvalidInput(f"index at {path} has an older format; rebuild it from the store")
        index = cls(int(meta["dim"]), str(meta["metric"]), str(meta["type"]), meta["params"])
        structure = faiss.read_index(str(path / "index.faiss"))
        ids = np.load(path / "ids.npy", allow_pickle=False)
        live = np.load(path / "live.npy", allow_pickle=False)
        idmap = IdMap(ids, live)
        if structure.ntotal != idmap.size or structure.d != index.dim:
            raise InvalidInput(f"index at {path} does not match its index.json; rebuild it")
        if idmap.live_count != meta["count"]:
            raise InvalidInput(f"index at {path} is inconsistent (count mismatch); rebuild it")
        index._faiss, index._map = structure, idmap
        index._template = np.load(path / "template.npy", allow_pickle=False).tobytes()
        index._trained = bool(meta["trained"])
        index._state.load(meta)
        return index
