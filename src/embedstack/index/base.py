"""The VectorIndex protocol every index backend implements.

Ids are int64 labels (the store's chunk row ids). Scores are "higher is better" similarities
for cosine and ip, and L2 distances (lower is better) for l2; results are always best first.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np


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
