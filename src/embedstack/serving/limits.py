"""Per-key rate limits (token buckets) and the request limits Settings did not already hold.

Limits that exist elsewhere are not repeated here: body size (MetricsAndLimits, and BodyLimit on
cluster API nodes, in app.py), documents and inputs per request, text length and `k` (the routes,
from Settings), vector dimension, NaN/inf and space (routes/documents.checked_vector), metadata
size and depth (ingest).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from embedstack.config import Settings
from embedstack.errors import InvalidInput, Overloaded

# a filter is {field: value} or {field: {op: value}} with $in/$nin lists: three levels at most
MAX_FILTER_DEPTH = 3


def budget_seconds(s: Settings, requested_ms: float | None) -> float:
    """A request's latency budget: its own (bounded) or the server default."""
    if requested_ms is None:
        return s.query_budget_ms / 1000.0
    if not 0 < requested_ms <= s.max_query_budget_ms:
        raise InvalidInput(
            f"latency budget {requested_ms:g} ms is out of range: send more than 0 and at "
            f"most {s.max_query_budget_ms:g} ms"
        )
    return requested_ms / 1000.0


def check_filter(flt: dict[str, Any] | None, max_conditions: int) -> None:
    """Refuse a filter nested deeper than the filter language goes, or with more conditions
    (fields, operators and $in/$nin values together) than `max_conditions`."""
    if flt is None:
        return
    count = 0

    def walk(node: Any, depth: int, where: str) -> None:
        nonlocal count
        if depth > MAX_FILTER_DEPTH and isinstance(node, dict | list):
            raise InvalidInput(
                f"filter is nested too deep at {where}: write {{field: value}} or "
                "{field: {operator: value}}, with a list only for $in/$nin"
            )
        if isinstance(node, dict):
            for k, v in node.items():
                count += 1
                walk(v, depth + 1, f"{where}.{k}" if where else str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                count += 1
                walk(v, depth + 1, f"{where}[{i}]")
        if count > max_conditions:
            raise InvalidInput(
                f"filter has over {max_conditions} conditions (fields, operators and list "
                "values): narrow it, or filter in several queries"
            )

    walk(flt, 1, "")


@dataclass
class Bucket:
    """A token bucket that may run into debt: a request is admitted while the balance is
    positive, so one large request (many texts) is never refused forever, and pays later."""

    rate: float  # tokens per second; 0 = unlimited
    capacity: float
    tokens: float
    updated: float

    def take(self, n: float, now: float) -> float:
        """0.0 if admitted (and charged), else the seconds until it would be."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.capacity, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = max(now, self.updated)
        if self.tokens <= 0:
            return -self.tokens / self.rate + 1.0 / self.rate
        self.tokens -= n
        return 0.0


class RateLimiter:
    """Two buckets per key (requests/s, texts/s); a key's own rates win over the defaults."""

    def __init__(self, default_rps: float, default_texts: float, burst_s: float) -> None:
        self.default_rps = default_rps
        self.default_texts = default_texts
        self.burst_s = burst_s
        self._buckets: dict[tuple[str, str], Bucket] = {}
        self._lock = threading.Lock()

    @classmethod
    def of(cls, settings: Settings) -> RateLimiter:
        """The limiter of a server's settings (its default rates and burst)."""
        s = settings
        return cls(s.rate_limit_rps, s.rate_limit_texts_per_s, s.rate_limit_burst_s)

    def _bucket(self, key: str, kind: str, rate: float, now: float) -> Bucket:
        found = self._buckets.get((key, kind))
        if found is None or found.rate != rate:
            cap = max(1.0, rate * self.burst_s)
            found = Bucket(rate, cap, cap, now)
            self._buckets[(key, kind)] = found
        return found

    def charge(
        self, key: str, kind: str, n: float, rate: float | None, now: float | None = None
    ) -> None:
        """Charge `n` requests or texts to `key`; Overloaded (429 + Retry-After) when its bucket
        is empty."""
        default = self.default_rps if kind == "requests" else self.default_texts
        r = default if rate is None else rate
        with self._lock:
            t = time.monotonic() if now is None else now
            wait = self._bucket(key, kind, r, t).take(n, t)
        if wait > 0:
            raise Overloaded(
                f"API key {key} is over its rate limit of {r:g} {kind}/s: retry after "
                f"{wait:.1f} s, or ask for a higher limit",
                retry_after=wait,
            )
