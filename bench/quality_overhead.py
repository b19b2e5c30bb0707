"""Overhead of the quality signals (drift, online recall@k, feedback) on query latency.

Two real servers on the same machine and the same corpus (the pydoc sections, or GCIDE entries
with --gcide N), one with every quality signal on (the defaults: drift, recall sampling 5% at
most 5/s, feedback) and one with all three off (EMBEDSTACK_QUALITY_DRIFT=0,
EMBEDSTACK_RECALL_SAMPLE_FRACTION=0, EMBEDSTACK_QUALITY_FEEDBACK=0). Closed-loop sequential
text queries go to them in alternating rounds (order shuffled per round), so load changes on a
shared machine hit both alike; the table shows p50/p90 per side, the ratio of p50s, and the
median of the per-round p50 ratios. A second table times the hot-path call itself
(QualityObserver.observe) in process, which no machine load blurs as much.

    python bench/quality_overhead.py [--rounds 8] [--queries 100] [--model all-MiniLM-L6-v2]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    PYDOC_JSONL,
    Server,
    load_note,
    post,
    say,
    server_env,
    table,
    wait_jobs,
)  # fmt: skip
from embedstack.obs.feedback import FeedbackLog
from embedstack.obs.metrics import Metrics
from embedstack.registry.quality import QualityConfig, QualityObserver
from embedstack.storage.feedback import FEEDBACK, FeedbackStore

PINNED = {
    "EMBEDSTACK_MODEL_BACKENDS": '{"all-MiniLM-L6-v2": "onnx-fp32"}',  # no backend race
    "EMBEDSTACK_QUERY_BUDGET_MS": "10000",  # a loaded machine must not shed the measured queries
}
OFF = {"EMBEDSTACK_QUALITY_DRIFT": "0", "EMBEDSTACK_RECALL_SAMPLE_FRACTION": "0",
       "EMBEDSTACK_QUALITY_FEEDBACK": "0"}  # fmt: skip


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rounds", type=int, default=8, help="alternating rounds (default 8)")
    p.add_argument("--queries", type=int, default=100, help="queries per side per round")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="the collection's model")
    p.add_argument("--mode", default="dense", choices=("dense", "hybrid"), help="query mode")
    p.add_argument("--docs", type=int, default=80, help="pydoc sections indexed (default 80)")
    return p.parse_args()


def documents() -> list[dict[str, Any]]:
    import orjson

    rows = [orjson.loads(line) for line in PYDOC_JSONL.read_bytes().splitlines() if line]
    return [{"id": r["id"], "text": r["text"]} for r in rows]


def queries(docs: list[dict[str, Any]], n: int) -> list[str]:
    """Sentences of the corpus, shuffled (the queries users would send)."""
    out = [s.strip() for d in docs for s in d["text"].split(". ") if len(s.split()) >= 6]
    random.Random(0).shuffle(out)
    return [q[:300] for q in out[:n]]


def prepare(server: Server, model: str, docs: list[dict[str, Any]]) -> None:
    with server.client() as c:
        post(c, "/v1/collections", {"name": "docs", "model": model})
        job = post(c, "/v1/collections/docs/documents", {"documents": docs})
        wait_jobs(c, [job["job_id"]])


def run_round(server: Server, texts: list[str], mode: str) -> list[float]:
    times = []
    with server.client() as c:
        for text in texts:
            started = time.perf_counter()
            r = c.post("/v1/collections/docs/query", json={"text": text, "mode": mode})
            times.append(time.perf_counter() - started)
            if r.status_code != 200:
                raise RuntimeError(f"query -> {r.status_code}: {r.text[:300]}")
    return times


def observe_cost(calls: int = 20_000) -> tuple[float, float]:
    """Microseconds per QualityObserver.observe call: all signals on (recall sampling at the
    default 5%, the exact re-run itself off the calling thread; feedback durable, its batched
    writes to feedback.db counted in), and all off."""
    from embedstack.storage.store import Store

    with tempfile.TemporaryDirectory() as tmp:
        store = Store(Path(tmp) / "s.db")
        from embedstack.registry.indexes import IndexManager

        metrics = Metrics()
        indexes = IndexManager(store, Path(tmp) / "i", metrics)
        hits = [{"document_id": f"d{i}", "score": 0.9 - i / 100} for i in range(10)]
        vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
        out = []
        for cfg in (QualityConfig(), QualityConfig(drift=False, recall_fraction=0, feedback=False)):
            durable = FeedbackStore(Path(tmp) / FEEDBACK) if cfg.feedback else None
            log = FeedbackLog(cfg.feedback_max_queries, cfg.recall_k, durable)
            obs = QualityObserver(store, indexes, metrics, cfg, log)  # no thread: queue fills
            started = time.perf_counter()
            for i in range(calls):
                obs.observe("docs", "space", vec, hits, False)
                if i % 500 == 499:  # the background flush, every 2 s at 250 queries/s
                    log.flush()
            out.append((time.perf_counter() - started) / calls * 1e6)
        store.close()
    return out[0], out[1]


def main() -> None:
    args = parse_args()
    say(f"bench/quality_overhead.py {' '.join(sys.argv[1:])}\n{load_note()}")
    docs = documents()
    texts = queries(docs, args.queries)
    on_times: list[float] = []
    off_times: list[float] = []
    ratios = []
    with tempfile.TemporaryDirectory(prefix="embedstack-quality-") as tmp:
        on_dir, off_dir = Path(tmp) / "on", Path(tmp) / "off"
        on_dir.mkdir()
        off_dir.mkdir()
        on_env, off_env = server_env(**PINNED), server_env(**PINNED, **OFF)
        with Server(on_dir, on_env) as on, Server(off_dir, off_env) as off:
            for server in (on, off):
                prepare(server, args.model, docs[: args.docs])
                run_round(server, texts[:20], args.mode)  # warm-up
            rng = random.Random(1)
            for _ in range(args.rounds):
                sides = [("on", on), ("off", off)]
                rng.shuffle(sides)
                got = {name: run_round(server, texts, args.mode) for name, server in sides}
                on_times += got["on"]
                off_times += got["off"]
                ratios.append(statistics.median(got["on"]) / statistics.median(got["off"]))
    rows = []
    for name, t in (("quality on", on_times), ("quality off", off_times)):
        ms = np.asarray(t) * 1000
        rows.append([name, len(ms), np.percentile(ms, 50), np.percentile(ms, 90)])
    table(f"query latency, {args.mode} text queries, {args.model} ({load_note()})",
          ["side", "queries", "p50 ms", "p90 ms"], rows)  # fmt: skip
    p50_ratio = rows[0][2] / rows[1][2]
    each = ", ".join(f"{r:.3f}" for r in ratios)
    say(f"p50 on/off: {p50_ratio:.3f} ({(p50_ratio - 1) * 100:+.1f}%); median of per-round p50 "
        f"ratios: {statistics.median(ratios):.3f} (rounds: {each})")  # fmt: skip
    on_us, off_us = observe_cost()
    share = (on_us - off_us) / 1000 / rows[1][2] * 100
    table("hot-path call QualityObserver.observe, in process",
          ["signals", "us per call"], [["all on", on_us], ["all off", off_us]])  # fmt: skip
    say(f"observe() adds {on_us - off_us:.1f} us per query: {share:.2f}% of the off p50")
    say(load_note())


if __name__ == "__main__":
    main()
