"""Recall and QPS measurement shared by bench/index.py and the peer scripts (numpy only, so it
runs in every peer's own venv).

QPS is one query per call (batch 1, the latency path a query service sees), over a fixed slice
of the held-out queries: 1 thread runs them in order; 2 threads split them and run concurrently.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

# the one recall@k; its import chain is numpy and the stdlib, so peers' own venvs can load it
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
from embedstack.index.gate import recall_at_k as shared_recall_at_k

SearchOne = Callable[[np.ndarray], "list[int] | np.ndarray"]
K = 10


def recall_at_k(got: list[list[int]] | np.ndarray, truth: np.ndarray, k: int = K) -> float:
    """embedstack.index.gate.recall_at_k over the answers run_all returned (it may stop early)."""
    return shared_recall_at_k(got, truth[: len(got)], k)


def run_all(search_one: SearchOne, queries: np.ndarray, budget_s: float = 20.0) -> list[list[int]]:
    """Answers for the queries in order; a slow system stops after `budget_s` (200 at least):
    score recall against truth[: len(answers)]."""
    out: list[list[int]] = []
    started = time.perf_counter()
    for q in queries:
        out.append(list(np.asarray(search_one(q))[:K]))
        if len(out) >= 200 and time.perf_counter() - started > budget_s:
            break
    return out


def timed(
    search_one: SearchOne,
    queries: np.ndarray,
    threads: int,
    budget_s: float = 1.0,
    init: Callable[[], object] | None = None,
) -> tuple[float, float]:
    """(queries per second, CPU microseconds per query in the calling threads) over as many
    queries as fit about `budget_s` (at least 50). The CPU time does not depend on how busy the
    shared box is; the wall-clock QPS does. `init` runs first in each measuring thread (e.g.
    faiss.omp_set_num_threads(1): OpenMP settings are per thread, and new threads start at the
    default, one per core)."""
    if init is not None:
        init()
    started = time.perf_counter()
    for q in queries[:20]:  # warm up and size the run
        search_one(q)
    per_query = (time.perf_counter() - started) / 20
    n = int(min(len(queries), max(50, budget_s / max(per_query, 1e-6))))
    n -= n % threads
    chunks = np.array_split(queries[:n], threads)
    cpu = [0.0] * threads

    def work(slot: int, chunk: np.ndarray) -> None:
        if init is not None:
            init()
        began = time.thread_time()
        for q in chunk:
            search_one(q)
        cpu[slot] = time.thread_time() - began

    workers = [threading.Thread(target=work, args=(i, c)) for i, c in enumerate(chunks)]
    started = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    return n / (time.perf_counter() - started), sum(cpu) / n * 1e6


def interleaved(
    fns: list[SearchOne],
    queries: np.ndarray,
    threads: int,
    rounds: int = 3,
    init: Callable[[], object] | None = None,
) -> list[tuple[float, float]]:
    """Best (QPS, CPU us/query) of each function over `rounds` rounds that alternate between
    them, so a burst of load from other processes hits all of them alike."""
    best = [(0.0, float("inf"))] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            q, c = timed(fn, queries, threads, init=init)
            best[i] = (max(best[i][0], q), min(best[i][1], c))
    return best


def best_qps(search_one: SearchOne, queries: np.ndarray, threads: int, rounds: int = 2) -> float:
    """Best QPS of `rounds` runs: the box is shared, so the best run is the least disturbed."""
    return interleaved([search_one], queries, threads, rounds)[0][0]


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def load_task(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(base, queries, truth) written by bench/index.py for the peers."""
    return tuple(np.load(folder / f"{name}.npy") for name in ("base", "queries", "truth"))  # type: ignore[return-value]


def emit(result: dict[str, object]) -> None:
    """One JSON line on stdout per measured configuration: the driver collects them."""
    print("RESULT " + json.dumps(result), flush=True)


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]
