"""Our int64 ids <-> dense positions 0..n-1, the labels the faiss structures actually store.

Removing an id only marks its position dead (a tombstone); searches exclude dead positions with a
bitmap selector, so k live results still come back without over-fetching. Compaction builds a
fresh map over the live positions. A removed id may be added again: it gets a new position.
Not thread-safe on its own: the owning index serializes writers and lets readers share.
"""

from __future__ import annotations

from typing import Any

import faiss
import numpy as np

from embedstack.index.common import MIN_CAPACITY


def bitmap_selector(mask: np.ndarray) -> tuple[Any, np.ndarray]:
    """A faiss IDSelectorBitmap over positions where `mask` is True, plus the bytes it points at
    (keep them referenced as long as the selector is used)."""
    bits = np.packbits(mask, bitorder="little")
    return faiss.IDSelectorBitmap(len(bits), faiss.swig_ptr(bits)), bits


def _with_sentinel(capacity: int) -> np.ndarray:
    """An int64 array for `capacity` ids plus a last slot holding -1, so that indexing it with
    faiss's padding label -1 yields -1 (no mask pass per search)."""
    ids = np.empty(capacity + 1, np.int64)
    ids[-1] = -1
    return ids


class IdMap:
    def __init__(self, ids: np.ndarray | None = None, live: np.ndarray | None = None) -> None:
        ids = np.empty(0, np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        live = np.ones(len(ids), bool) if live is None else np.asarray(live, dtype=bool)
        cap = max(MIN_CAPACITY, len(ids))
        self._ids = _with_sentinel(cap)  # by position; one slot past capacity holds -1
        self._live = np.zeros(cap, bool)
        self._n = len(ids)
        self._ids[: self._n] = ids
        self._live[: self._n] = live
        pos = np.flatnonzero(live)
        order = np.argsort(ids[pos], kind="stable")
        self._keys = ids[pos][order]  # sorted live ids
        self._kpos = pos[order]  # their positions
        if len(np.unique(self._keys)) != len(self._keys):
            raise ValueError("a live id appears at two positions")
        self._dead_sel: tuple[Any, np.ndarray] | None = None
        self._refresh_selector()

    # -- sizes ------------------------------------------------------------------------------
    @property
    def size(self) -> int:
        """Positions in use, dead ones included (= the faiss structure's ntotal)."""
        return self._n

    @property
    def live_count(self) -> int:
        return len(self._keys)

    @property
    def dead_count(self) -> int:
        return self._n - len(self._keys)

    def memory_bytes(self) -> int:
        dead_bits = len(self._dead_sel[1]) if self._dead_sel else 0
        return len(self._live) * 9 + len(self._keys) * 16 + dead_bits

    # -- lookups ----------------------------------------------------------------------------
    def find(self, ids: np.ndarray) -> np.ndarray:
        """Positions of live `ids` (int64), -1 where an id is absent or removed."""
        if len(self._keys) == 0 or len(ids) == 0:
            return np.full(len(ids), -1, np.int64)
        at = np.minimum(np.searchsorted(self._keys, ids), len(self._keys) - 1)
        return np.where(self._keys[at] == ids, self._kpos[at], -1)

    def to_ids(self, labels: np.ndarray) -> np.ndarray:
        """faiss result labels (positions, -1 padding) -> our ids (-1 padding): one take, as
        label -1 indexes the sentinel -1 in the last slot."""
        return self._ids[labels]

    def live_positions(self) -> np.ndarray:
        return np.sort(self._kpos) if self.dead_count else np.arange(self._n, dtype=np.int64)

    def ids_at(self, positions: np.ndarray) -> np.ndarray:
        return self._ids[positions]

    def live_flags(self) -> np.ndarray:
        """Whether each position 0..size-1 is live (a view: valid until the next write)."""
        return self._live[: self._n]

    def state(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids by position, live flags by position): enough to rebuild this map."""
        return self._ids[: self._n].copy(), self._live[: self._n].copy()

    # -- selectors --------------------------------------------------------------------------
    def dead_selector(self) -> Any | None:
        """Selector admitting live positions only, or None when nothing is dead."""
        return None if self._dead_sel is None else self._dead_sel[0]

    def _refresh_selector(self) -> None:
        self._dead_sel = bitmap_selector(self._live[: self._n]) if self.dead_count else None

    # -- writes -----------------------------------------------------------------------------
    def append(self, ids: np.ndarray) -> None:
        """Give new positions to `ids` (unique, none of them live) in order."""
        m = len(ids)
        if m == 0:
            return
        need = self._n + m
        if need > len(self._live):
            cap = max(need, 2 * len(self._live))
            grown_ids, grown_live = _with_sentinel(cap), np.zeros(cap, bool)
            grown_ids[: self._n] = self._ids[: self._n]
            grown_live[: self._n] = self._live[: self._n]
            self._ids, self._live = grown_ids, grown_live
        positions = np.arange(self._n, need, dtype=np.int64)
        self._ids[self._n : need] = ids
        self._live[self._n : need] = True
        self._n = need
        order = np.argsort(ids, kind="stable")
        at = np.searchsorted(self._keys, ids[order])
        self._keys = np.insert(self._keys, at, ids[order])
        self._kpos = np.insert(self._kpos, at, positions[order])
        if self.dead_count:
            self._refresh_selector()

    def kill(self, ids: np.ndarray) -> int:
        """Mark the live ones among (unique) `ids` dead. Returns how many were live."""
        if len(self._keys) == 0 or len(ids) == 0:
            return 0
        at = np.minimum(np.searchsorted(self._keys, ids), len(self._keys) - 1)
        at = np.unique(at[self._keys[at] == ids])
        if len(at) == 0:
            return 0
        self._live[self._kpos[at]] = False
        self._keys = np.delete(self._keys, at)
        self._kpos = np.delete(self._kpos, at)
        self._refresh_selector()
        return len(at)
