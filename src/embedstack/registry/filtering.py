"""Metadata filters of one live index, answered from memory (index/attributes.py).

A `FilterColumns` holds the columns of the keys filters have named so far, aligned with the
positions of the live index it serves, and brings them up to date before each filtered search:
- the index was replaced (compaction, retraining): the columns move to the new positions;
- the index appended positions (the change log added chunks): their values are read for
  those chunks only;
- a key no filter named before: its column is read for every chunk once (a scan of the store,
  seconds at 1M chunks: the price the SQL filter paid on every query). The IndexManager notes the
  keys on disk and warms their columns when the index next opens (registry/indexes.py);
- documents whose metadata was replaced while their chunks were kept (no change-log entry):
  the store notes each in metadata_changes (a trigger), read from the last seq seen.
Removed positions need nothing: the index never admits them.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any, Protocol, TypeGuard

import numpy as np

from embedstack.index.attributes import Attributes
from embedstack.storage.filters import conditions
from embedstack.storage.store import Store


class Positioned(Protocol):
    """An index whose vectors sit at positions 0..size-1 that only grow until it is replaced
    (index/faiss_index.py)."""

    @property
    def size(self) -> int: ...

    def labels(self, start: int = 0) -> np.ndarray: ...

    def positions(self, ids: np.ndarray) -> np.ndarray: ...

    def search_mask(
        self, queries: np.ndarray, k: int, mask: np.ndarray, **knobs: int
    ) -> tuple[np.ndarray, np.ndarray]: ...


def positioned(index: Any) -> TypeGuard[Positioned]:
    return all(hasattr(index, name) for name in ("size", "labels", "positions", "search_mask"))


class FilterColumns:
    def __init__(self, store: Store, collection: str, space_id: str) -> None:
        self._store = store
        self._collection = collection
        self._space_id = space_id
        self._lock = threading.Lock()
        self._attributes = Attributes()
        self._target: weakref.ref[Any] | None = None  # the index the positions belong to
        self._metadata_seq = 0

    def mask(self, index: Positioned, flt: dict[str, Any]) -> np.ndarray:
        """Bool by position of `index`: where the vector's document satisfies `flt` now."""
        checked = conditions(flt)  # InvalidInput for a bad filter, as the SQL filter raises
        with self._lock:
            self._update(index, {key for key, _, _ in checked})
            return self._attributes.mask(checked)

    def keys(self) -> frozenset[str]:
        """The keys whose columns are held."""
        return frozenset(self._attributes.columns)

    def warm(self, index: Positioned, keys: set[str]) -> None:
        """Build the columns of `keys` now (an index just opened: the keys filtered before),
        so that no query waits for the store's scan. A filtered search meanwhile waits for it."""
        with self._lock:
            self._update(index, keys)

    def memory_bytes(self) -> int:
        return self._attributes.memory_bytes()

    def _update(self, index: Positioned, keys: set[str]) -> None:
        seq = self._store.metadata_seq(self._collection)  # first: later changes are replayed
        attrs = self._attributes
        if self._target is None or self._target() is not index:
            missing = attrs.realign(index.labels(0))
            self._target = weakref.ref(index)
            self._fill(index, missing)
        if index.size > attrs.size:
            start = attrs.size
            labels = index.labels(start)
            attrs.append(labels, {key: [None] * len(labels) for key in attrs.columns})
            self._fill(index, np.arange(start, attrs.size))
        for key in sorted(keys - attrs.columns.keys()):
            ids, values = self._store.field_values(self._collection, self._space_id, [key])
            attrs.add_key(key, self._by_position(index, ids, values[key]))
        if seq > self._metadata_seq and attrs.columns:
            ids, values = self._store.field_values(
                self._collection, self._space_id, list(attrs.columns),
                changed_after=self._metadata_seq,
            )  # fmt: skip
            self._set(index, ids, values)
        self._metadata_seq = seq

    def _fill(self, index: Positioned, positions: np.ndarray) -> None:
        """Read the values at `positions` (new ones) from the store."""
        attrs = self._attributes
        if len(positions) and attrs.columns:
            ids = attrs.labels[positions].tolist()
            found, values = self._store.field_values(
                self._collection, self._space_id, list(attrs.columns), ids
            )
            self._set(index, found, values)

    def _set(self, index: Positioned, ids: list[int], values: dict[str, list[Any]]) -> None:
        pos = index.positions(np.asarray(ids, np.int64))
        keep = (pos >= 0) & (pos < self._attributes.size)
        picked = np.flatnonzero(keep).tolist()
        self._attributes.set(pos[keep], {k: [v[i] for i in picked] for k, v in values.items()})

    def _by_position(self, index: Positioned, ids: list[int], values: list[Any]) -> list[Any]:
        out: list[Any] = [None] * self._attributes.size
        pos = index.positions(np.asarray(ids, np.int64)).tolist()
        size = len(out)
        for p, value in zip(pos, values, strict=True):
            if 0 <= p < size:
                out[p] = value
        return out
