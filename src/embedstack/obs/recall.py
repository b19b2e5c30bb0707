"""Online recall@k of one index: per-query recalls of sampled live queries (the index's answer
against exact search), over a rolling window, with a 95% bootstrap confidence interval.

The interval resamples queries (not hit slots): the k slots of one query are not independent
draws, so a binomial interval over slots would be too narrow.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np

BOOTSTRAP_ROUNDS = 1000


@dataclass(frozen=True)
class RecallEstimate:
    recall: float
    low: float
    high: float
    queries: int

    def as_dict(self) -> dict[str, Any]:
        return {"recall": round(self.recall, 4), "low": round(self.low, 4),
                "high": round(self.high, 4), "queries": self.queries}  # fmt: skip


def bootstrap_interval(
    values: np.ndarray, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0
) -> tuple[float, float]:
    """The 2.5 and 97.5 percentiles of the mean of `values` resampled with replacement."""
    if len(values) == 0:
        return 0.0, 1.0
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), (rounds, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def query_recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Share of the true ids (-1 padding ignored) that `found` holds; 1.0 when there are none."""
    wanted = {int(i) for i in truth.tolist() if i >= 0}
    if not wanted:
        return 1.0
    return len(wanted.intersection(found.tolist())) / len(wanted)


class RecallWindow:
    """The last `size` per-query recalls of one index (thread-safe)."""

    def __init__(self, size: int = 200) -> None:
        self._values: deque[float] = deque(maxlen=size)
        self._lock = threading.Lock()

    def add(self, recall: float) -> None:
        with self._lock:
            self._values.append(recall)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)

    def estimate(self) -> RecallEstimate | None:
        with self._lock:
            values = np.asarray(self._values, dtype=np.float64)
        if len(values) == 0:
            return None
        low, high = bootstrap_interval(values)
        return RecallEstimate(float(values.mean()), low, high, len(values))
