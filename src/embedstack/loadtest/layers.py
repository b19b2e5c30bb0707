"""Where the time goes: each layer's share of query latency and its utilization over a load step,
from the deltas of the server's own /metrics scraped before and after the step.

Source of truth is `embedstack_stage_seconds{stage,route}` (per-stage latency histograms). When a
server does not export it, the layers fall back to what every server has -- the model forward
time per batch and the index search time -- and the rest of the latency (admission and queue
wait, tokenizing, hydrating, HTTP) is reported as one residual; the report says so.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from prometheus_client.parser import text_string_to_metric_families

Snapshot = dict[tuple[str, frozenset[tuple[str, str]]], float]

QUERY_ROUTE = "/v1/collections/{name}/query"
STAGE = "embedstack_stage_seconds"
# layer -> the stage label values that belong to it (unknown stages become layers of their own)
WAITS = ("admission", "admission_wait", "queue", "queue_wait", "batch_wait", "search_wait", "wait")
LAYERS: dict[str, tuple[str, ...]] = {
    "admission/queue wait": WAITS,
    "inference": ("tokenize", "forward", "inference", "embed", "pool", "postprocess"),
    "index search": ("search", "index_search"),
    "store/hydrate": ("hydrate", "store", "filter", "fetch"),
}
WAIT_LAYERS = frozenset({"admission/queue wait"})
SATURATED = 0.5  # a layer busier than this fraction of its capacity is a candidate constraint
CPU_SATURATED = 90.0  # machine CPU busy %, when the server runs on this machine


def parse(text: str) -> Snapshot:
    out: Snapshot = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = float(s.value)
    return out


def delta(before: Snapshot, after: Snapshot) -> Snapshot:
    return {k: v - before.get(k, 0.0) for k, v in after.items()}


def _total(d: Snapshot, name: str, **match: str) -> float:
    return sum(
        v for (n, labels), v in d.items()
        if n == name and all(dict(labels).get(k) == want for k, want in match.items())
    )  # fmt: skip


def _stage_totals(d: Snapshot) -> dict[str, tuple[float, float]]:
    """stage -> (seconds, observations) over the query route (all routes when none is labelled
    as the query route)."""
    rows: dict[tuple[str, str], list[float]] = {}
    for (name, labels), v in d.items():
        if name in (f"{STAGE}_sum", f"{STAGE}_count"):
            lab = dict(labels)
            row = rows.setdefault((lab.get("stage", "?"), lab.get("route", "")), [0.0, 0.0])
            row[0 if name.endswith("_sum") else 1] += v
    query_routes = {r for _, r in rows if "query" in r}
    out: dict[str, tuple[float, float]] = {}
    for (stage, route), (secs, n) in rows.items():
        if query_routes and route not in query_routes:
            continue
        s, c = out.get(stage, (0.0, 0.0))
        out[stage] = (s + secs, c + n)
    return out


def _layer_of(stage: str) -> str:
    return next((layer for layer, stages in LAYERS.items() if stage in stages), stage)


@dataclass(frozen=True)
class CpuTimes:
    busy: float
    total: float


def machine_cpu(url: str) -> CpuTimes | None:
    """This machine's CPU jiffies (busy, total) when the server runs here (a loopback URL)."""
    host = urlsplit(url).hostname or ""
    try:
        local = (
            host in ("localhost", socket.gethostname()) or host.startswith("127.") or host == "::1"
        )
        if not local or not os.path.exists("/proc/stat"):
            return None
        with open("/proc/stat") as f:
            fields = [float(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0.0)
    return CpuTimes(sum(fields) - idle, sum(fields))


def cpu_busy_pct(before: CpuTimes | None, after: CpuTimes | None) -> float | None:
    if before is None or after is None or after.total <= before.total:
        return None
    return 100.0 * (after.busy - before.busy) / (after.total - before.total)


def breakdown(d: Snapshot, wall_s: float, search_threads: int) -> dict[str, Any]:
    """Each layer's mean ms per query, share of the mean query latency, and utilization."""
    e2e_sum = _total(d, "embedstack_http_request_duration_seconds_sum", route=QUERY_ROUTE,
                     status="200")  # fmt: skip
    e2e_n = _total(d, "embedstack_http_request_duration_seconds_count", route=QUERY_ROUTE,
                   status="200")  # fmt: skip
    e2e_ms = 1000.0 * e2e_sum / e2e_n if e2e_n > 0 else None
    forward_s = _total(d, "embedstack_inference_duration_seconds_sum")
    batches = _total(d, "embedstack_inference_duration_seconds_count")
    search_s = _total(d, "embedstack_index_search_duration_seconds_sum")
    searches = _total(d, "embedstack_index_search_duration_seconds_count")
    # utilization: busy seconds per wall second over the layer's capacity
    utilization = {
        "inference": forward_s / wall_s if wall_s > 0 else None,  # one model-runner thread
        "index search": search_s / (wall_s * search_threads) if wall_s > 0 else None,
    }
    capacity = {
        "inference": "1 model-runner thread",
        "index search": f"{search_threads} search threads",
    }
    stages = _stage_totals(d)
    layers: dict[str, dict[str, Any]] = {}
    if stages:
        source = STAGE
        for stage, (secs, n) in stages.items():
            if n <= 0:
                continue
            # the mean per observation: what one query spends there (a forward pass is
            # observed once per batch, and each query of the batch waits all of it)
            row = layers.setdefault(_layer_of(stage), {"mean_ms": 0.0, "stages": []})
            row["mean_ms"] += 1000.0 * secs / n
            row["stages"].append(stage)
        for layer, row in layers.items():
            if layer not in utilization and layer not in WAIT_LAYERS:
                secs = sum(stages[s][0] for s in row["stages"])
                utilization[layer] = None
                capacity[layer] = f"{secs / wall_s:.2f} busy s/s (capacity unknown)"
    else:
        source = ("fallback: embedstack_stage_seconds is absent on this server; inference from "
                  "embedstack_inference_duration_seconds (forward per batch), index search from "
                  "embedstack_index_search_duration_seconds; admission/queue wait, tokenize and "
                  "store/hydrate are inside the residual")  # fmt: skip
        if batches > 0:
            layers["inference"] = {"mean_ms": 1000.0 * forward_s / batches, "stages": ["forward"]}
        if searches > 0:
            layers["index search"] = {"mean_ms": 1000.0 * search_s / searches, "stages": ["search"]}
    rows = []
    for layer, row in layers.items():
        share = row["mean_ms"] / e2e_ms if e2e_ms else None
        rows.append({
            "layer": layer, "mean_ms": row["mean_ms"], "share": share,
            "utilization": utilization.get(layer),
            "capacity": capacity.get(layer, "a wait: grows when the layer after it saturates"),
            "stages": sorted(row["stages"]),
        })  # fmt: skip
    if e2e_ms:
        known = sum(r["mean_ms"] for r in rows)
        rows.append({"layer": "residual (HTTP, event loop, unattributed)",
                     "mean_ms": max(0.0, e2e_ms - known), "share": max(0.0, 1 - known / e2e_ms),
                     "utilization": None, "capacity": "", "stages": []})  # fmt: skip
    return {"source": source, "query_mean_ms": e2e_ms, "queries": e2e_n, "layers": rows,
            "batches": batches, "texts_per_batch": _per_batch(d, batches)}  # fmt: skip


def _per_batch(d: Snapshot, batches: float) -> float | None:
    texts = _total(d, "embedstack_batch_size_sum")
    return texts / batches if batches > 0 else None


def constrained(rows: Iterable[dict[str, Any]], cpu_pct: float | None) -> tuple[str, str]:
    """(layer, why): the busiest layer against its capacity, else the largest share."""
    rows = [r for r in rows if not r["layer"].startswith("residual")]
    if not rows:
        return "unknown", "no layer timings in the server's metrics"
    busy = [r for r in rows if r["utilization"] is not None]
    top = max(busy, key=lambda r: r["utilization"], default=None)
    cpu = f"; machine CPU {cpu_pct:.0f}% busy (server and load generator)" if cpu_pct else ""
    if top is not None and top["utilization"] >= SATURATED:
        return top["layer"], (
            f"{top['layer']} is {100 * top['utilization']:.0f}% utilized ({top['capacity']}) and "
            f"takes {100 * (top['share'] or 0):.0f}% of the query latency{cpu}"
        )
    if cpu_pct is not None and cpu_pct >= CPU_SATURATED:
        return "machine CPU", (
            f"no layer is over {100 * SATURATED:.0f}% utilized, but the machine's CPUs are "
            f"{cpu_pct:.0f}% busy (server, load generator and anything else running): time goes "
            "to waiting for a core (the residual and the waits), not to one layer's capacity"
        )
    working = [r for r in rows if r["layer"] not in WAIT_LAYERS] or rows
    largest = max(working, key=lambda r: r["share"] or 0.0)
    return largest["layer"], (
        f"no layer is over {100 * SATURATED:.0f}% utilized; {largest['layer']} takes the largest "
        f"share of the query latency ({100 * (largest['share'] or 0):.0f}%){cpu}"
    )
