"""Baseline characterization: the peak sustainable rate at a p99 SLA, found by stepping the
offered rate (geometric steps, then a few bisections between the last passing and the first
failing rate), with each layer's share of the latency and its utilization at the peak.

A step passes when the p99 of its answered requests is within the SLA, at most `max_failed`
of its requests were refused (429) or failed, and the achieved rate is at least 95% of the
offered one.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from embedstack.client import Client
from embedstack.loadtest import layers
from embedstack.loadtest.run import LoadResult, LoadSpec, run_load

MIN_ACHIEVED = 0.95
PAUSE_S = 1.0  # between steps: let queues drain


@dataclass(frozen=True)
class Stepping:
    sla_p99_ms: float
    start_qps: float
    factor: float
    step_s: float
    max_steps: int
    refine: int
    max_failed: float = 0.01
    search_threads: int = 2


def judge(result: LoadResult, sla_p99_ms: float, max_failed: float) -> tuple[bool, list[str]]:
    """(passed, why): the step's checks, each as a sentence with its numbers."""
    d = result.to_dict()
    p99 = d["latency"].get("p99_ms")
    failed = d["rejected_429"] + d["errors"] + d["not_sent"]
    checks = [
        (p99 is not None and p99 <= sla_p99_ms,
         f"p99 {'-' if p99 is None else f'{p99:.1f}'} ms vs SLA {sla_p99_ms:g} ms"),
        (failed <= max_failed * d["scheduled"],
         f"refused/failed {failed} of {d['scheduled']} (429 {d['rejected_429']}, errors "
         f"{d['errors']}, not sent {d['not_sent']}) vs at most {100 * max_failed:g}%"),
        (d["achieved_over_offered"] >= MIN_ACHIEVED,
         f"achieved {d['achieved_qps']:.1f}/s of {d['offered_qps']:g}/s offered "
         f"({100 * d['achieved_over_offered']:.0f}%, at least {100 * MIN_ACHIEVED:.0f}%)"),
    ]  # fmt: skip
    return all(ok for ok, _ in checks), [("ok: " if ok else "FAIL: ") + w for ok, w in checks]


def step(client: Client, spec: LoadSpec, texts: Sequence[str], queries: Sequence[str],
         stepping: Stepping) -> dict[str, Any]:  # fmt: skip
    """One load step with the server's metrics scraped around it."""
    before, cpu0 = layers.parse(client.metrics()), layers.machine_cpu(spec.url)
    result = asyncio.run(run_load(spec, texts, queries))
    after, cpu1 = layers.parse(client.metrics()), layers.machine_cpu(spec.url)
    passed, why = judge(result, stepping.sla_p99_ms, stepping.max_failed)
    d = result.to_dict()
    cpu = layers.cpu_busy_pct(cpu0, cpu1)
    found = layers.breakdown(layers.delta(before, after), result.wall_s, stepping.search_threads)
    return {
        "qps": spec.qps, "passed": passed, "why": why,
        "p50_ms": d["latency"].get("p50_ms"), "p90_ms": d["latency"].get("p90_ms"),
        "p99_ms": d["latency"].get("p99_ms"), "p99.9_ms": d["latency"].get("p99.9_ms"),
        "achieved_qps": d["achieved_qps"], "scheduled": d["scheduled"], "ok": d["ok"],
        "rejected_429": d["rejected_429"], "errors": d["errors"], "not_sent": d["not_sent"],
        "send_lag_p99_ms": d["send_lag"].get("p99_ms"),
        "generator_cpu_pct": d["generator_cpu_pct"], "machine_cpu_pct": cpu,
        "breakdown": found,
    }  # fmt: skip


def characterize(
    client: Client, base: LoadSpec, texts: Sequence[str], queries: Sequence[str],
    stepping: Stepping, say: Callable[[str], None] = lambda _: None,
) -> dict[str, Any]:  # fmt: skip
    """Step the rate up until a step fails, bisect `refine` times, and describe the peak."""
    steps: list[dict[str, Any]] = []

    def run(qps: float) -> dict[str, Any]:
        b = base
        spec = LoadSpec(b.url, qps, stepping.step_s, b.mix, b.collection, b.headers, b.k,
                        b.timeout_s, b.max_inflight, b.seed + len(steps), b.budget_ms)  # fmt: skip
        row = step(client, spec, texts, queries, stepping)
        steps.append(row)
        p99 = row["p99_ms"]
        say(f"step {len(steps)}: {qps:.1f} req/s -> p99 "
            f"{'-' if p99 is None else f'{p99:.1f}'} ms, achieved {row['achieved_qps']:.1f}/s, "
            f"429 {row['rejected_429']}, errors {row['errors']}: "
            f"{'pass' if row['passed'] else 'FAIL'}")  # fmt: skip
        time.sleep(PAUSE_S)
        return row

    best: dict[str, Any] | None = None
    failed: dict[str, Any] | None = None
    qps = stepping.start_qps
    for _ in range(stepping.max_steps):
        row = run(qps)
        if not row["passed"]:
            failed = row
            break
        best = row
        qps *= stepping.factor
    if best is not None and failed is not None:
        lo, hi = best["qps"], failed["qps"]
        for _ in range(stepping.refine):
            row = run((lo + hi) / 2)
            if row["passed"]:
                best, lo = row, row["qps"]
            else:
                failed, hi = row, row["qps"]
    collection = client.get_collection(base.collection)
    out: dict[str, Any] = {
        "url": base.url, "collection": base.collection, "mix": str(base.mix),
        "documents": collection.documents, "chunks": collection.chunks,
        "vectors": collection.vectors, "index": collection.index,
        "sla_p99_ms": stepping.sla_p99_ms, "step_s": stepping.step_s,
        "criteria": {"max_failed_share": stepping.max_failed, "min_achieved": MIN_ACHIEVED},
        "steps": steps, "loadavg": list(os.getloadavg()),
        "peak": None, "bottleneck": None,
        "saturated": failed is not None,
    }  # fmt: skip
    if best is None:
        out["note"] = (f"even {stepping.start_qps:g} req/s missed the SLA: lower --start-qps "
                       "or raise --sla-p99-ms")  # fmt: skip
        return out
    if failed is None:
        out["note"] = (f"every step passed up to {best['qps']:.1f} req/s: the peak is at least "
                       "that; raise --max-steps to find where it ends")  # fmt: skip
    out["peak"] = {k: best[k] for k in ("qps", "p50_ms", "p90_ms", "p99_ms", "achieved_qps")}
    found = best["breakdown"]
    layer, why = layers.constrained(found["layers"], best["machine_cpu_pct"])
    out["bottleneck"] = {
        "constrained_layer": layer, "why": why, "source": found["source"],
        "layers": found["layers"], "query_mean_ms": found["query_mean_ms"],
        "texts_per_batch": found["texts_per_batch"], "machine_cpu_pct": best["machine_cpu_pct"],
    }  # fmt: skip
    return out
