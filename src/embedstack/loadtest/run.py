"""Open-loop constant-arrival load: request i is due at start + i / qps whatever happened to the
ones before it, and its latency counts from that due time (no coordinated omission: a stalled
server shows as latency, not as fewer requests). Latencies go into HDR histograms (microseconds,
3 significant digits). The generator's own lag (due time -> actual send) and CPU share are
reported, so a saturated generator is visible rather than mistaken for the server.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import orjson
from hdrh.histogram import HdrHistogram

from embedstack.loadtest.http import Endpoint, ExchangeError, Pool
from embedstack.loadtest.workload import Mix

HIGHEST_US = 600_000_000  # 10 minutes
PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p99.9", 99.9))
MAX_TIMELINE = 200_000  # (due offset, latency) points kept for the plot


def histogram() -> HdrHistogram:
    return HdrHistogram(1, HIGHEST_US, 3)


def summary(h: HdrHistogram) -> dict[str, float]:
    """count, percentiles, mean and max in milliseconds."""
    out: dict[str, float] = {"count": float(h.get_total_count())}
    if h.get_total_count() == 0:
        return out
    for name, p in PERCENTILES:
        out[f"{name}_ms"] = h.get_value_at_percentile(p) / 1000.0
    out["mean_ms"] = h.get_mean_value() / 1000.0
    out["max_ms"] = h.get_max_value() / 1000.0
    return out


@dataclass(frozen=True)
class LoadSpec:
    url: str
    qps: float
    duration_s: float
    mix: Mix
    collection: str
    headers: dict[str, str]
    k: int = 10
    timeout_s: float = 30.0
    max_inflight: int = 1024
    seed: int = 1
    budget_ms: float | None = None  # sent with each query (the server's admission budget)


@dataclass
class LoadResult:
    spec: LoadSpec
    scheduled: int = 0
    ok: int = 0
    rejected: int = 0  # 429
    errors: Counter[str] = field(default_factory=Counter)  # "HTTP 500", "timeout", ...
    not_sent: int = 0  # the generator's own in-flight bound was reached
    wall_s: float = 0.0  # first due time -> last answer
    cpu_s: float = 0.0  # the generator process's CPU time over the run
    latency: dict[str, HdrHistogram] = field(default_factory=dict)  # op -> ok latencies
    lag: HdrHistogram = field(default_factory=histogram)  # due time -> send
    timeline: list[tuple[float, float, str]] = field(default_factory=list)

    def all_ok(self) -> HdrHistogram:
        total = histogram()
        for h in self.latency.values():
            total.add(h)
        return total

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        ops = {op: summary(h) for op, h in sorted(self.latency.items())}
        return {
            "url": s.url,
            "collection": s.collection,
            "mix": str(s.mix),
            "offered_qps": s.qps,
            "duration_s": s.duration_s,
            "query_budget_ms": s.budget_ms,
            "scheduled": self.scheduled,
            "ok": self.ok,
            "rejected_429": self.rejected,
            "errors": self.error_count,
            "error_kinds": dict(self.errors),
            "not_sent": self.not_sent,
            "achieved_qps": self.ok / self.wall_s if self.wall_s > 0 else 0.0,
            "achieved_over_offered": (self.ok / self.wall_s / s.qps) if self.wall_s > 0 else 0.0,
            "latency": summary(self.all_ok()),
            "by_operation": ops,
            "send_lag": summary(self.lag),
            "generator_cpu_pct": 100.0 * self.cpu_s / self.wall_s if self.wall_s > 0 else 0.0,
            "loadavg": list(os.getloadavg()),
        }


class Requests:
    """The request of each operation, as (method, path, body) bytes ready to send."""

    def __init__(self, collection: str, texts: Sequence[str], queries: Sequence[str], k: int,
                 run_id: str, budget_ms: float | None = None) -> None:  # fmt: skip
        self.texts, self.queries, self.k, self.run_id = texts, queries, k, run_id
        self.budget_ms = budget_ms
        c = quote(collection, safe="")
        self.paths = {
            "query": f"/v1/collections/{c}/query",
            "ingest": f"/v1/collections/{c}/documents",
            "embed": "/v1/embeddings",
        }

    def build(self, op: str, i: int) -> tuple[str, str, bytes]:
        if op == "query":
            body = {"text": self.queries[i % len(self.queries)], "k": self.k}
            if self.budget_ms is not None:
                body["budget_ms"] = self.budget_ms
        elif op == "ingest":
            doc = {"id": f"lt-{self.run_id}-{i}", "text": self.texts[i % len(self.texts)]}
            body = {"documents": [doc]}
        else:
            body = {"input": self.queries[i % len(self.queries)]}
        return "POST", self.paths[op], orjson.dumps(body)


async def run_load(spec: LoadSpec, texts: Sequence[str], queries: Sequence[str]) -> LoadResult:
    """Send qps x duration requests on schedule; wait for every answer (or its timeout)."""
    result = LoadResult(spec)
    n = max(1, round(spec.qps * spec.duration_s))
    ops = spec.mix.schedule(n, spec.seed)
    result.scheduled = n
    result.latency = {op: histogram() for op, _ in spec.mix.shares}
    requests = Requests(spec.collection, texts, queries, spec.k, uuid.uuid4().hex[:8],
                        spec.budget_ms)  # fmt: skip
    pool = Pool(Endpoint(spec.url, spec.headers))
    loop = asyncio.get_running_loop()
    inflight: set[asyncio.Task[None]] = set()
    cpu0 = time.process_time()
    start = loop.time() + 0.05
    last_done = [start]

    async def one(i: int, op: str, due: float) -> None:
        method, path, body = requests.build(op, i)
        result.lag.record_value(max(1, int((loop.time() - due) * 1e6)))
        try:
            status, _ = await asyncio.wait_for(pool.request(method, path, body), spec.timeout_s)
        except TimeoutError:
            result.errors["timeout"] += 1
            return
        except ExchangeError as exc:
            result.errors[f"connection: {str(exc)[:60]}"] += 1
            return
        finally:
            last_done[0] = max(last_done[0], loop.time())
        took = loop.time() - due
        if 200 <= status < 300:
            result.ok += 1
            result.latency[op].record_value(max(1, min(HIGHEST_US, int(took * 1e6))))
            if len(result.timeline) < MAX_TIMELINE:
                result.timeline.append((due - start, took * 1000.0, op))
        elif status == 429:
            result.rejected += 1
        else:
            result.errors[f"HTTP {status}"] += 1

    try:
        for i, op in enumerate(ops):
            due = start + i / spec.qps
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if len(inflight) >= spec.max_inflight:
                result.not_sent += 1
                continue
            task = asyncio.create_task(one(i, op, due))
            inflight.add(task)
            task.add_done_callback(inflight.discard)
        if inflight:
            await asyncio.wait(set(inflight), timeout=spec.timeout_s + 5)
    finally:
        for task in list(inflight):
            task.cancel()
        pool.close()
    result.wall_s = max(last_done[0], start + (n - 1) / spec.qps) - start
    result.cpu_s = time.process_time() - cpu0
    return result
