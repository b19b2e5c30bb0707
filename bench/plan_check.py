"""Check the capacity planner's memory formulas against real indexes.

Builds each index type through `create_index` at 100k and 1M random-normal float32 vectors
(dim 384; fine for memory, not for recall), adding in chunks as ingest does, and prints the
planner's estimate next to the index's own `memory_bytes()` and the process RSS growth, with the
error of each, and the measured build time next to the planner's estimate. Verdict: every
planner estimate within 15% of memory_bytes().

    python bench/plan_check.py                       # 100k and 1M, every type
    python bench/plan_check.py --sizes 100000 --types hnsw,ivf_pq

The trained types' recall gate is off (recall_floor=0): on random vectors it would only spend
time raising knobs. IVF types get nlist = auto for the full size so the planner and the index
agree on it (an index trained on its first chunk would otherwise size nlist for that chunk).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import os
import time
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from embedstack.index.factory import INDEX_TYPES, create_index
from embedstack.index.planner import build_seconds, human_bytes, plan, resolve_params
from embedstack.index.structures import auto_nlist

CHUNK = 100_000
TOLERANCE = 0.15
console = Console(highlight=False, width=160)


def rss_bytes() -> int:
    """Resident set size after handing freed heap pages back to the OS."""
    gc.collect()
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def params_for(index_type: str, n: int, dim: int) -> dict[str, Any]:
    big = n >= 1_000_000
    if index_type == "hnsw":
        return {"M": 16 if big else 32, "ef_construction": 40}
    if index_type == "hnsw_sq8":
        return {"M": 16, "ef_construction": 40, "recall_floor": 0}
    if index_type == "ivf_flat":
        return {"nlist": auto_nlist(n), "recall_floor": 0}
    if index_type == "ivf_pq":
        return {"nlist": auto_nlist(n), "m": dim // 8, "refine_factor": 0, "recall_floor": 0}
    if index_type in ("sq8", "scann"):
        return {"recall_floor": 0}
    return {}


def vectors(n: int, dim: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, dim), dtype=np.float32)
    for start in range(0, n, CHUNK):
        block = rng.standard_normal((min(CHUNK, n - start), dim), dtype=np.float32)
        out[start : start + len(block)] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def measure(index_type: str, n: int, dim: int, data: np.ndarray) -> dict[str, Any]:
    params = params_for(index_type, n, dim)
    before = rss_bytes()
    index = create_index(index_type, dim, "cosine", params)
    start = time.perf_counter()
    for lo in range(0, n, CHUNK):
        ids = np.arange(lo, min(n, lo + CHUNK), dtype=np.int64)
        index.add(ids, data[lo : lo + len(ids)])
    seconds = time.perf_counter() - start
    measured = index.memory_bytes()
    grown = rss_bytes() - before
    estimate = plan(n, dim, index_type, params, node_ram_bytes=1 << 50)
    resolved = resolve_params(index_type, params, n, dim)
    del index
    return {
        "type": index_type, "n": n, "params": params, "plan": estimate.index_bytes,
        "measured": measured, "rss": grown, "build_s": seconds,
        "plan_s": build_seconds(index_type, resolved, n, dim),
    }  # fmt: skip


def pct(estimate: float, actual: float) -> str:
    return f"{(estimate - actual) / actual * 100:+.1f}%" if actual else "n/a"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="100000,1000000")
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--types", default=",".join(t for t in INDEX_TYPES if t != "exact"))
    args = ap.parse_args()
    one, five, _ = os.getloadavg()
    console.print(f"{os.cpu_count()} cores, load average {one:.1f} / {five:.1f} (1 / 5 min)")
    rows = []
    for n in (int(float(s)) for s in args.sizes.split(",")):
        data = vectors(n, args.dim, seed=n)
        for index_type in args.types.split(","):
            try:
                row = measure(index_type, n, args.dim, data)
            except Exception as exc:  # report and go on: one backend must not stop the rest
                console.print(f"{index_type} at {n}: skipped ({exc})")
                continue
            rows.append(row)
            console.print(
                f"{index_type:9} n={n:>9,} plan {human_bytes(row['plan']):>10} measured "
                f"{human_bytes(row['measured']):>10} ({pct(row['plan'], row['measured'])}) "
                f"rss +{human_bytes(row['rss'])} build {row['build_s']:.1f}s "
                f"(plan {row['plan_s']:.1f}s)"
            )
        del data
    table = Table(title=f"planner vs real indexes (dim {args.dim}, float32, cosine)")
    for col in ("type", "vectors", "params", "planner", "memory_bytes()", "error", "RSS growth",
                "error vs RSS", "build s", "planner build s"):  # fmt: skip
        table.add_column(col, justify="left" if col in ("type", "params") else "right")
    shown = {"recall_floor"}
    for r in rows:
        params = " ".join(f"{k}={v}" for k, v in r["params"].items() if k not in shown)
        table.add_row(
            r["type"], f"{r['n']:,}", params, human_bytes(r["plan"]), human_bytes(r["measured"]),
            pct(r["plan"], r["measured"]), human_bytes(r["rss"]), pct(r["plan"], r["rss"]),
            f"{r['build_s']:.1f}", f"{r['plan_s']:.1f}",
        )  # fmt: skip
    console.print(table)
    worst = max((abs(r["plan"] - r["measured"]) / r["measured"] for r in rows), default=0.0)
    verdict = "PASS" if worst <= TOLERANCE else "FAIL"
    console.print(f"{verdict}: worst planner error vs memory_bytes() {worst * 100:.1f}% "
                  f"(tolerance {TOLERANCE * 100:.0f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
