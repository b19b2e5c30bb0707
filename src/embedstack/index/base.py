"""The protocols every index backend implements: VectorIndex (add, remove, search, save) and
MaintainedIndex, which adds the maintenance contract the index manager and the tuner rely on.

Ids are int64 labels (the store's chunk row ids). Scores are "higher is better" similarities
for cosine and ip, and L2 distances (lower is better) for l2; results are always best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class VectorIndex(Protocol):
    @property
    def dim(self) -> int: ...

    @property
    def metric(self) -> str: ...

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Add (n,) int64 ids with (n, dim) float32 vectors. Ids already present are skipped."""
        ...

    def remove(self, ids: np.ndarray) -> int:
        """Remove ids (tombstoned or physically). Returns how many were present."""
        ...

    def search(
        self, queries: np.ndarray, k: int, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(q, dim) queries -> (scores (q,k) float32, ids (q,k) int64), padded with id -1.

        `allow`, when given, is an int64 array of ids; only those may be returned.
        """
        ...

    def count(self) -> int:
        """Live (not removed) vectors."""
        ...

    def memory_bytes(self) -> int: ...

    def save(self, path: Path) -> None:
        """Write the index into directory `path` atomically (temp + fsync + rename)."""
        ...


@runtime_checkable
class MaintainedIndex(VectorIndex, Protocol):
    """A VectorIndex that says when it needs rebuilding and builds its replacement.

    Trained families (sq8, hnsw_sq8, ivf_*, scann) serve exactly until they have enough vectors,
    then train and run the recall gate; untrained families are always trained, never need a
    retrain, and have no gate. `retrained()` and `compacted()` only read: they return a new index
    (or the index itself when there is nothing to do) for the caller to swap in; writes made
    meanwhile must be replayed onto it.
    """

    @property
    def trained(self) -> bool:
        """False while a trained family still serves exactly from its buffer."""
        ...

    @property
    def knobs(self) -> dict[str, int]:
        """Search knobs in effect: the configured ones, raised by the recall gate if needed."""
        ...

    @property
    def gate(self) -> dict[str, Any]:
        """The recall gate's last result: floor, recall, knobs, passed ({} if it never ran)."""
        ...

    def needs_retrain(self) -> bool:
        """True once the index has grown or churned past what it was trained on."""
        ...

    def retrained(self) -> MaintainedIndex:
        """A new index trained on the live vectors (auto params re-resolved, re-gated)."""
        ...

    def tombstone_ratio(self) -> float:
        """Fraction of stored entries that are tombstones (0.0 when removal is physical)."""
        ...

    def compacted(self) -> MaintainedIndex:
        """An index of the live vectors only: tombstone_ratio() == 0."""
        ...
