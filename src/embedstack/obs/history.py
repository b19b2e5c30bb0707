"""The dashboard's memory: a bounded ring of samples read from the server's own Prometheus registry.

Every `interval_s` the sampler reads the registry (the same series /metrics exports) and keeps one
sample of derived values -- latency percentiles and request rates over the interval from the
histogram deltas, queue and batch gauges, and the quality gauges (drift, online recall,
click-through) where they exist -- for `window_s` seconds. A series that is not registered simply
has no key in a sample: the page shows "no data" for it.

Keys are "panel|series": e.g. "latency_ms|p99", "qps|429", "drift_psi|docs/abc123/top1".
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry

# routes that are the dashboard's own traffic (or probes), not the workload it shows
QUIET_ROUTES = frozenset({"/metrics", "/v1/metrics/history", "/dashboard", "/healthz", "/readyz"})
PERCENTILES = (("p50", 0.5), ("p90", 0.9), ("p99", 0.99))
GAUGE_PANELS = (  # (metric family, panel, label names joined into the series name)
    ("embedstack_batcher_pending_texts", "queue", ("lane",)),
    ("embedstack_drift_psi", "drift_psi", ("collection", "space", "signal")),
    ("embedstack_drift_alert", "drift_alert", ("collection", "space")),
    ("embedstack_online_recall", "recall", ("collection", "space")),
    ("embedstack_click_through", "ctr", ("collection", "space")),
)


@dataclass(frozen=True)
class Sample:
    t: float  # unix seconds
    values: dict[str, float]


@dataclass
class _Hist:
    """One histogram family's cumulative state: bucket counts by upper bound, sum, count."""

    buckets: dict[float, float] = field(default_factory=dict)
    total: float = 0.0
    count: float = 0.0

    def minus(self, before: _Hist | None) -> _Hist:
        if before is None:
            return self
        return _Hist(
            {le: n - before.buckets.get(le, 0.0) for le, n in self.buckets.items()},
            self.total - before.total,
            self.count - before.count,
        )

    def add(self, other: _Hist) -> None:
        for le, n in other.buckets.items():
            self.buckets[le] = self.buckets.get(le, 0.0) + n
        self.total += other.total
        self.count += other.count


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """Prometheus-style histogram_quantile over cumulative bucket counts (linear in a bucket)."""
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return None
    rank = q * buckets[bounds[-1]]
    lower, below = 0.0, 0.0
    for le in bounds:
        n = buckets[le]
        if n >= rank:
            if math.isinf(le):
                return lower  # beyond the last finite bucket: its bound is all we know
            inside = n - below
            return lower + (le - lower) * ((rank - below) / inside if inside > 0 else 1.0)
        lower, below = le, n
    return lower


def _histograms(
    registry: CollectorRegistry,
) -> dict[tuple[str, tuple[tuple[str, str], ...]], _Hist]:
    """Every histogram series: (family, labels without 'le') -> cumulative state."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], _Hist] = {}
    for family in registry.collect():
        if family.type != "histogram":
            continue
        for s in family.samples:
            labels = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            h = out.setdefault((family.name, labels), _Hist())
            if s.name.endswith("_bucket"):
                h.buckets[float(s.labels["le"])] = s.value
            elif s.name.endswith("_sum"):
                h.total = s.value
            elif s.name.endswith("_count"):
                h.count = s.value
    return out


def _gauges(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in registry.collect():
        if family.type in ("gauge", "unknown"):
            out[family.name] = [(s.labels, s.value) for s in family.samples]
    return out


def _merged(parts: Iterable[_Hist]) -> _Hist:
    total = _Hist()
    for part in parts:
        total.add(part)
    return total


class History:
    """The ring of samples. One owner (the server's sampler task) calls `sample()`; readers
    call `since()` (a list copy: safe from any thread of the event loop)."""

    def __init__(self, registry: CollectorRegistry, interval_s: float, window_s: float) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self.window_s = window_s
        self.samples: deque[Sample] = deque(maxlen=max(2, math.ceil(window_s / interval_s)))
        self._last: dict[tuple[str, tuple[tuple[str, str], ...]], _Hist] = {}
        self._last_t: float | None = None

    def sample(self, now: float | None = None) -> Sample:
        t = time.time() if now is None else now
        hists = _histograms(self.registry)
        deltas = {key: h.minus(self._last.get(key)) for key, h in hists.items()}
        dt = t - self._last_t if self._last_t is not None else None
        self._last, self._last_t = hists, t
        values: dict[str, float] = {}
        if dt is not None and dt > 0:  # rates and percentiles need an interval
            self._requests(deltas, dt, values)
            self._batches(deltas, values)
            self._stages(deltas, values)
        self._gauge_values(values)
        sample = Sample(t, values)
        self.samples.append(sample)
        return sample

    def since(self, t: float | None = None) -> list[Sample]:
        return [s for s in list(self.samples) if t is None or s.t > t]

    @staticmethod
    def _requests(deltas: dict[tuple[str, tuple[tuple[str, str], ...]], _Hist], dt: float,
                  values: dict[str, float]) -> None:  # fmt: skip
        work: list[_Hist] = []
        by_status: dict[str, float] = {"ok": 0.0, "429": 0.0, "5xx": 0.0}
        for (name, labels), h in deltas.items():
            if name != "embedstack_http_request_duration_seconds":
                continue
            lab = dict(labels)
            if lab.get("route") in QUIET_ROUTES:
                continue
            status = lab.get("status", "")
            kind = "429" if status == "429" else "5xx" if status.startswith("5") else "ok"
            by_status[kind] += h.count
            if kind == "ok":
                work.append(h)
        for kind, n in by_status.items():
            values[f"qps|{kind}"] = n / dt
        merged = _merged(work)
        for name, q in PERCENTILES:
            v = quantile(merged.buckets, q)
            if v is not None:
                values[f"latency_ms|{name}"] = v * 1000.0

    @staticmethod
    def _batches(deltas: dict[tuple[str, tuple[tuple[str, str], ...]], _Hist],
                 values: dict[str, float]) -> None:  # fmt: skip
        for family, key in (("embedstack_batch_size", "batch|texts per batch"),
                            ("embedstack_batch_tokens", "batch|padded tokens / 100")):  # fmt: skip
            merged = _merged(h for (name, _), h in deltas.items() if name == family)
            if merged.count > 0:
                scale = 100.0 if "tokens" in key else 1.0
                values[key] = merged.total / merged.count / scale

    @staticmethod
    def _stages(deltas: dict[tuple[str, tuple[tuple[str, str], ...]], _Hist],
                values: dict[str, float]) -> None:  # fmt: skip
        by_stage: dict[str, list[_Hist]] = {}
        for (name, labels), h in deltas.items():
            if name == "embedstack_stage_seconds":
                by_stage.setdefault(dict(labels).get("stage", "?"), []).append(h)
        for stage, parts in by_stage.items():
            merged = _merged(parts)
            if merged.count > 0:
                values[f"stage_ms|{stage}"] = merged.total / merged.count * 1000.0

    def _gauge_values(self, values: dict[str, float]) -> None:
        gauges = _gauges(self.registry)
        for family, panel, label_names in GAUGE_PANELS:
            for labels, value in gauges.get(family, []):
                series = "/".join(labels.get(n, "") for n in label_names if n in labels) or "all"
                key = f"{panel}|{series}"
                values[key] = values.get(key, 0.0) + value
        for labels, value in gauges.get("embedstack_queue_jobs", []):
            if labels.get("status") in ("queued", "leased", "dead"):
                values[f"queue|ingest jobs {labels['status']}"] = value
