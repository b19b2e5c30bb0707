"""Query drift of one embedding space: a baseline sample of three per-query signals against a
rolling window of the latest queries, compared with PSI and the two-sample KS statistic.

Signals: the top-1 score of the answer, the cosine of the query vector to the corpus centroid,
and the query vector's norm. The baseline is the first `baseline_size` queries after the space
starts serving (creation, cutover) or after `reset()` (on demand); the window is the last
`window_size` queries. `record` only appends to bounded deques (called on the hot path);
`evaluate` does the numpy work (called off it).

An alert needs both tests to agree on at least one signal: PSI at or over `psi_alert` (0.25 is
the usual "significant shift") and KS over its critical value at alpha = 0.001, so a small window
that is merely noisy does not page anyone.
"""

from __future__ import annotations

import math
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import numpy as np

SIGNALS = ("top1_score", "centroid_cosine", "norm")
PSI_BINS = 10
KS_C_ALPHA = 1.95  # c(alpha) of the two-sample KS critical value at alpha = 0.001
_EPS = 1e-4


def psi(baseline: np.ndarray, current: np.ndarray, bins: int = PSI_BINS) -> float:
    """Population stability index of `current` against `baseline`, over `bins` quantile bins of
    the baseline (empty bins smoothed with a small epsilon)."""
    if len(baseline) == 0 or len(current) == 0:
        return 0.0
    edges = np.unique(np.quantile(baseline, np.linspace(0, 1, bins + 1)[1:-1]))
    expected = np.bincount(np.searchsorted(edges, baseline, side="right"), minlength=len(edges) + 1)
    actual = np.bincount(np.searchsorted(edges, current, side="right"), minlength=len(edges) + 1)
    e = np.maximum(expected / len(baseline), _EPS)
    a = np.maximum(actual / len(current), _EPS)
    return float(np.sum((a - e) * np.log(a / e)))


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap between the two empirical
    distribution functions."""
    if len(a) == 0 or len(b) == 0:
        return 0.0
    a, b = np.sort(a), np.sort(b)
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / len(a)
    cdf_b = np.searchsorted(b, points, side="right") / len(b)
    return float(np.max(np.abs(cdf_a - cdf_b)))


def ks_critical(n: int, m: int) -> float:
    """The KS statistic over which two samples of sizes n and m differ at alpha = 0.001."""
    if n == 0 or m == 0:
        return math.inf
    return KS_C_ALPHA * math.sqrt((n + m) / (n * m))


@dataclass
class DriftReport:
    state: str  # "collecting baseline" | "collecting window" | "ok" | "drift"
    baseline_queries: int
    window_queries: int
    psi: dict[str, float] = field(default_factory=dict)
    ks: dict[str, float] = field(default_factory=dict)
    ks_critical: float | None = None

    @property
    def alert(self) -> bool:
        return self.state == "drift"

    def as_dict(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "alert": self.alert,
            "baseline_queries": self.baseline_queries,
            "window_queries": self.window_queries,
            "psi": {k: round(v, 4) for k, v in self.psi.items()},
            "ks": {k: round(v, 4) for k, v in self.ks.items()},
            "ks_critical": None if self.ks_critical is None else round(self.ks_critical, 4),
        }


class DriftMonitor:
    """Baseline and rolling window of one space's query signals. `record` is thread-safe and
    cheap; `evaluate` computes the report."""

    def __init__(
        self,
        baseline_size: int = 500,
        window_size: int = 500,
        min_window: int = 100,
        psi_alert: float = 0.25,
    ) -> None:
        self.baseline_size = baseline_size
        self.window_size = window_size
        self.min_window = min(min_window, window_size)
        self.psi_alert = psi_alert
        self.centroid: np.ndarray | None = None  # unit vector; None: the signal is skipped
        self._lock = threading.Lock()
        self._baseline: list[tuple[float, np.ndarray]] = []
        self._window: deque[tuple[float, np.ndarray]] = deque(maxlen=window_size)

    def record(self, top1: float, vec: np.ndarray) -> None:
        with self._lock:
            if len(self._baseline) < self.baseline_size:
                self._baseline.append((top1, vec))
            else:
                self._window.append((top1, vec))

    def reset(self) -> None:
        """Start a new baseline from the next queries (after an intended change)."""
        with self._lock:
            self._baseline = []
            self._window.clear()

    def _signals(self, rows: list[tuple[float, np.ndarray]]) -> dict[str, np.ndarray]:
        scores = np.asarray([r[0] for r in rows], dtype=np.float64)
        vecs = np.stack([r[1] for r in rows]).astype(np.float64)
        norms = np.linalg.norm(vecs, axis=1)
        out = {"top1_score": scores, "norm": norms}
        if self.centroid is not None and self.centroid.shape[0] == vecs.shape[1]:
            out["centroid_cosine"] = (vecs @ self.centroid) / np.maximum(norms, 1e-12)
        return out

    def evaluate(self) -> DriftReport:
        with self._lock:
            baseline, window = list(self._baseline), list(self._window)
        if len(baseline) < self.baseline_size:
            return DriftReport("collecting baseline", len(baseline), len(window))
        if len(window) < self.min_window:
            return DriftReport("collecting window", len(baseline), len(window))
        return compare(self._signals(baseline), self._signals(window), self.psi_alert)


def compare(
    base: dict[str, np.ndarray], cur: dict[str, np.ndarray], psi_alert: float
) -> DriftReport:
    """The report of a window's signals against a baseline's (each: signal -> one value per
    query; a signal missing from either is skipped): "drift" when PSI and KS agree on one."""
    n, m = len(base["top1_score"]), len(cur["top1_score"])
    critical = ks_critical(n, m)
    report = DriftReport("ok", n, m, ks_critical=critical)
    for name in SIGNALS:
        if name not in base or name not in cur:
            continue
        report.psi[name] = psi(base[name], cur[name])
        report.ks[name] = ks_statistic(base[name], cur[name])
        if report.psi[name] >= psi_alert and report.ks[name] > critical:
            report.state = "drift"
    return report
