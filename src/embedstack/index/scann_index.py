"""ScaNN backend (optional extra: `pip install embedstack[scann]`, scann 1.4.2, no TensorFlow).

Untrained, it serves exactly from an ExactIndex buffer; at `train_min` vectors it builds a ScaNN
tree (k-means partitions) + anisotropic-hashing scorer + int8 re-ranking over them. After that:
- adds are ScaNN upserts into the existing partitions (no rebuild);
- deletes are ScaNN's native deletes, which move the last datapoint into the hole: we mirror that
  move in our position -> id array, so there are no tombstones and nothing to compact;
- `retrained()` copies the searcher and has ScaNN re-partition it for the grown size;
- allow filters over-fetch (ScaNN has no filter in its Python API) and fall back to a search over
  every partition and datapoint when the allowed set is small.
ScaNN keeps no float vectors (int8 re-ranking), so scores are close to, not exactly, the metric's.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from embedstack.errors import InvalidInput
from embedstack.index.common import (
    ReadWriteLock,
    as_ids,
    as_matrix,
    check_dim_metric,
    check_k,
    empty_result,
    read_meta,
    save_dir_atomically,
    save_npy,
    unique_first,
)
from embedstack.index.exact import ExactIndex
from embedstack.index.params import check_knobs, validate_params
from embedstack.index.structures import auto_leaves, train_min
from embedstack.index.training import TrainingState

AH_THRESHOLD = 0.2  # anisotropic quantization threshold recommended for dot-product search
FORMAT = 1
SMALL_ALLOW_MIN = 2000


def require_scann() -> Any:
    try:
        from scann.scann_ops.py import scann_ops_pybind
    except ImportError as exc:
        raise InvalidInput(
            "index type 'scann' needs the scann package: pip install 'embedstack[scann]'"
        ) from exc
    return scann_ops_pybind


def scann_shape(params: dict[str, Any], n: int) -> dict[str, int]:
    return {"leaves": int(params["leaves"]) or auto_leaves(n)}


class ScannIndex:
    def __init__(self, dim: int, metric: str, params: dict[str, Any] | None = None) -> None:
        check_dim_metric(dim, metric)
        self._sp = require_scann()
        self._dim, self._metric = dim, metric
        self._params = validate_params("scann", params)
        self._lock = ReadWriteLock()
        self._buffer: ExactIndex | None = ExactIndex(dim, metric)
        self._searcher: Any = None
        self._rows = np.empty(0, np.int64)  # ScaNN datapoint index -> our id
        self._pos: dict[int, int] = {}
        self._state = TrainingState.for_params("scann", self._params)

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def metric(self) -> str:
        return self._metric

    @property
    def index_type(self) -> str:
        return "scann"

    @property
    def trained(self) -> bool:
        return self._searcher is not None

    @property
    def knobs(self) -> dict[str, int]:
        return dict(self._state.knobs)

    @property
    def gate(self) -> dict[str, Any]:
        return dict(self._state.gate)

    def tombstone_ratio(self) -> float:
        """Always 0.0: ScaNN deletes move the last datapoint into the hole."""
        return 0.0

    def compacted(self) -> ScannIndex:
        """Itself: with no tombstones there is nothing to compact."""
        return self

    def count(self) -> int:
        return self._buffer.count() if self._buffer is not None else len(self._pos)

    def memory_bytes(self) -> int:
        if self._buffer is not None:
            return self._buffer.memory_bytes()
        n, d = len(self._pos), self._dim
        rerank = 2 * d if self._metric == "l2" else d + 4  # bfloat16, or int8 + norm
        per_vector = rerank + d // 4 + 4  # + AH codes (4 bits per 2 dims) + partition token
        centers = self._state.shape["leaves"] * d * 4 + d * 4 * 16 * 2
        return n * per_vector + centers + len(self._rows) * 8 + n * 100  # + id dict

    # -- writes -----------------------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        ids = as_ids(ids)
        vectors = as_matrix(vectors, self._dim, "vectors")
        if len(ids) != len(vectors):
            raise InvalidInput(f"got {len(ids)} ids but {len(vectors)} vectors; pass one per id")
        with self._lock.write():
            if self._buffer is not None:
                self._buffer.add(ids, vectors)
                if self._buffer.count() >= train_min("scann", self._params):
                    self._train_from_buffer()
                return
            keep = unique_first(ids)
            keep = keep[[int(i) not in self._pos for i in ids[keep].tolist()]]
            if len(keep):
                self._append(ids[keep], vectors[keep])

    def _append(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        rows = self._searcher.searcher.upsert(
            [None] * len(ids), np.ascontiguousarray(vectors), 4096
        )
        start = len(self._pos)
        if list(rows) != list(range(start, start + len(ids))):
            raise RuntimeError("ScaNN assigned unexpected datapoint indices; rebuild the index")
        self._rows = np.concatenate([self._rows[:start], ids])
        self._state.added += len(ids)
        self._pos.update(zip(ids.tolist(), rows, strict=True))

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(as_ids(ids))
        with self._lock.write():
            if self._buffer is not None:
                return self._buffer.remove(ids)
            rows = []
            for i in ids.tolist():
                row = self._pos.pop(i, None)
                if row is None:
                    continue
                last = len(self._pos)  # size after this removal = index of the last datapoint
                if row != last:  # ScaNN moves the last datapoint into the hole
                    moved = int(self._rows[last])
                    self._rows[row] = moved
                    self._pos[moved] = row
                rows.append(row)
            if rows:
                self._searcher.searcher.delete(rows)
                self._rows = self._rows[: len(self._pos)].copy()
            return len(rows)

    # -- training ---------------------------------------------------------------------------
    def _train_from_buffer(self) -> None:
        assert self._buffer is not None
        n = self._buffer.count()
        ids, vectors = self._buffer.snapshot()
        shape = scann_shape(self._params, n)
        leaves = shape["leaves"]
        distance = "squared_l2" if self._metric == "l2" else "dot_product"
        threshold = float("nan") if self._metric == "l2" else AH_THRESHOLD
        from scann.scann_ops.py.scann_builder import ReorderType

        knobs = self._default_knobs(leaves)
        builder = self._sp.builder(vectors, 10, distance).tree(
            num_leaves=leaves,
            num_leaves_to_search=knobs["leaves_to_search"],
            training_sample_size=min(n, 100_000),
        )
        builder = builder.score_ah(2, anisotropic_quantization_threshold=threshold)
        # int8 re-ranking under squared L2 refuses upserts and deletes in scann 1.4.2: bfloat16
        rerank = ReorderType.BFLOAT16 if self._metric == "l2" else ReorderType.INT8
        self._searcher = builder.reorder(knobs["reorder"], quantize=rerank).build()
        self._rows = ids.copy()
        self._pos = dict(zip(ids.tolist(), range(n), strict=True))
        self._buffer = None
        self._state.trained_on(n, shape, knobs)
        caps = {"leaves_to_search": leaves, "reorder": 4096}
        self._state.run_gate(self._gate_search, vectors, ids, self._metric, caps)

    def _gate_search(self, queries: np.ndarray, k: int, knobs: dict[str, int]) -> np.ndarray:
        return self._search_trained(queries, k, knobs)[1]

    def _default_knobs(self, leaves: int) -> dict[str, int]:
        to_search = int(self._params["leaves_to_search"]) or max(1, math.ceil(leaves / 10))
        return {"leaves_to_search": min(leaves, to_search), "reorder": int(self._params["reorder"])}

    def needs_retrain(self) -> bool:
        """True once trained and grown or churned past retrain_growth x the trained size (upserts
        land in partitions trained on data that has since been replaced)."""
        return self._state.needs_retrain(self.count())

    def retrainer(self) -> Callable[[], ScannIndex]:
        """Snapshot the vectors now (decoded from ScaNN's int8 / bfloat16 re-ranking rows) and
        return a function that builds a new index on them from scratch, auto params re-resolved
        and re-gated. Writes after this call are not in it: replay them before the swap."""
        with self._lock.read():
            if self._buffer is not None:
                ids, vectors = self._buffer.snapshot()
            else:
                ids, vectors = self._rows[: len(self._pos)].copy(), self._decoded()

        def train() -> ScannIndex:
            fresh = ScannIndex(self._dim, self._metric, self._params)
            with fresh._lock.write():
                assert fresh._buffer is not None
                fresh._buffer.add(ids, vectors)
                if len(ids):
                    fresh._train_from_buffer()
            return fresh

        return train

    def retrained(self) -> ScannIndex:
        """`retrainer()()`: snapshot and train in one call."""
        return self.retrainer()()

    def _decoded(self) -> np.ndarray:
        """The re-ranking rows ScaNN stores, as float32, in datapoint order."""
        with tempfile.TemporaryDirectory() as tmp:
            self._searcher.serialize(tmp)
            folder = Path(tmp)
            if (folder / "int8_dataset.npy").exists():
                rows = np.load(folder / "int8_dataset.npy").astype(np.float32)
                return rows / np.load(folder / "int8_multipliers.npy")[None, :]
            bits = np.load(folder / "bfloat16_dataset.npy").view(np.uint16).astype(np.uint32)
            return np.ascontiguousarray((bits << 16).view(np.float32).reshape(len(bits), -1))

    # -- search -----------------------------------------------------------------------------
    def search(
        self, queries: np.ndarray, k: int, allow: np.ndarray | None = None, **knobs: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best k per query; keyword knobs leaves_to_search / reorder override for this call."""
        k = check_k(k)
        queries = as_matrix(queries, self._dim, "queries")
        over = check_knobs("scann", knobs) if knobs else {}
        with self._lock.read():
            if self._buffer is not None:
                return self._buffer.search(queries, k, allow)
            if not self._pos:
                return empty_result(len(queries), k, self._metric)
            effective = {**self._state.knobs, **over}
            if allow is None:
                return self._search_trained(queries, k, effective)
            return self._search_allowed(queries, k, np.unique(as_ids(allow, "allow")), effective)

    def _search_trained(
        self, queries: np.ndarray, k: int, knobs: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        n = len(self._pos)
        kk = min(k, n)
        rows, dist = self._searcher.searcher.search_batched(
            queries, kk, max(kk, knobs["reorder"]), knobs["leaves_to_search"], False, 0
        )
        scores, ids = empty_result(len(queries), k, self._metric)
        rows = np.asarray(rows, dtype=np.int64)
        width = rows.shape[1] if rows.ndim == 2 else 0
        dist = np.asarray(dist, dtype=np.float32)
        if self._metric == "l2":
            dist = np.sqrt(np.maximum(dist, 0.0))
        ids[:, :width] = self._rows[rows]
        scores[:, :width] = dist
        return scores, ids

    def _search_allowed(
        self, queries: np.ndarray, k: int, allowed: np.ndarray, knobs: dict[str, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        present = np.fromiter((i in self._pos for i in allowed.tolist()), bool, len(allowed))
        allowed = allowed[present]
        if len(allowed) == 0:
            return empty_result(len(queries), k, self._metric)
        n = len(self._pos)
        widen = n / len(allowed)
        if len(allowed) < SMALL_ALLOW_MIN:  # over-fetch cannot find them reliably: scan all
            fetch = {"leaves_to_search": self._state.shape["leaves"], "reorder": n}
            want = n
        else:
            leaves = self._state.shape["leaves"]
            to_search = min(leaves, math.ceil(knobs["leaves_to_search"] * widen))
            want = min(n, math.ceil(k * widen * 2))
            fetch = {"leaves_to_search": to_search, "reorder": max(knobs["reorder"], want)}
        scores, ids = self._search_trained(queries, want, fetch)
        keep = np.isin(ids, allowed)
        out_scores, out_ids = empty_result(len(queries), k, self._metric)
        for r in range(len(queries)):
            hit = np.flatnonzero(keep[r])[:k]
            out_scores[r, : len(hit)] = scores[r, hit]
            out_ids[r, : len(hit)] = ids[r, hit]
        return out_scores, out_ids

    # -- persistence ------------------------------------------------------------------------
    def save(self, path: Path) -> None:
        with self._lock.read():
            meta = {
                "type": "scann",
                "format": FORMAT,
                "params": self._params,
                "dim": self._dim,
                "metric": self._metric,
                "count": self.count(),
                **self._state.meta(),
            }
            buffer, searcher, rows = self._buffer, self._searcher, self._rows.copy()

            def write(tmp: Path) -> None:
                if buffer is not None:
                    ids, vectors = buffer.snapshot()
                    save_npy(tmp / "ids.npy", ids)
                    save_npy(tmp / "vectors.npy", vectors)
                    return
                save_npy(tmp / "ids.npy", rows)
                (tmp / "scann").mkdir()
                searcher.serialize(str(tmp / "scann"), relative_path=True)

            save_dir_atomically(path, meta, write)

    @classmethod
    def load(cls, path: Path) -> ScannIndex:
        path = Path(path)
        meta = read_meta(path)
        if meta.get("format") != FORMAT:
            raise InvalidInput(f"index at {path} has another format; rebuild it from the store")
        index = cls(int(meta["dim"]), str(meta["metric"]), meta["params"])
        ids = np.load(path / "ids.npy", allow_pickle=False)
        if not (path / "scann").exists():
            index.add(ids, np.load(path / "vectors.npy", allow_pickle=False))
        else:
            index._searcher = index._sp.load_searcher(str(path / "scann"))
            index._buffer, index._rows = None, ids
            index._pos = dict(zip(ids.tolist(), range(len(ids)), strict=True))
            index._state.load(meta)
        if index.count() != meta["count"] or index._searcher_size() != index.count():
            raise InvalidInput(f"index at {path} is inconsistent (count mismatch); rebuild it")
        return index

    def _searcher_size(self) -> int:
        return self.count() if self._searcher is None else int(self._searcher.size())
