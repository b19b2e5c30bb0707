"""Soak: a mixed load (queries, ingest, deletes) at twice the measured peak, for a long time.

1. Start `embedstack serve` on loopback (its own data dir) and seed a collection.
2. Measure the peak: closed loop, `--concurrency` clients, the same mix, `--peak-s` seconds.
3. Drive an open loop at `--factor` x that rate (default 2) for `--duration` seconds (default
   30 min), with at most `--max-inflight` requests outstanding (beyond that the generator
   counts a "shed" instead of queueing without bound).
Every `--window` seconds it prints and records: requests by outcome (2xx, 429, 503, 507, other
4xx, 5xx, connection errors), p50/p99 latency per kind, the server's RSS and the documents
waiting to be indexed.
At the end: the server must still be healthy and the collection consistent (vectors ==
chunks once ingest drains); the RSS slope over the run after warm-up (MB/hour) says whether
memory is flat. Writes a JSON report with `--out`.

    python bench/soak.py --duration 240            # 4 minutes
    python bench/soak.py                           # the 30-minute run
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from common import load_note, say, server_env
from embedstack.testing import ServerProcess

KINDS = ("query", "ingest", "delete")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class Load:
    def __init__(self, rng: random.Random, mix: tuple[float, float, float], batch: int) -> None:
        self.rng = rng
        self.mix = mix
        self.batch = batch
        self.next_id = 10_000_000
        self.live: list[str] = []

    def text(self) -> str:
        return " ".join(f"w{self.rng.randrange(20000)}" for _ in range(self.rng.randrange(20, 200)))

    def pick(self) -> str:
        roll = self.rng.random()
        if roll < self.mix[0] or not self.live:
            return "query"
        return "ingest" if roll < self.mix[0] + self.mix[1] else "delete"

    async def send(self, c: httpx.AsyncClient, kind: str) -> int:
        if kind == "query":
            words = " ".join(f"w{self.rng.randrange(20000)}" for _ in range(8))
            r = await c.post("/v1/collections/soak/query", json={"text": words, "k": 10})
        elif kind == "ingest":
            # one new document and new versions of batch-1 live ones: with the delete share
            # equal to the ingest share the corpus keeps its size, so memory should stay flat
            self.next_id += 1
            fresh = f"s{self.next_id}"
            ids = {self.rng.choice(self.live) for _ in range(self.batch - 1)} - {fresh}
            docs = [{"id": i, "text": self.text()} for i in [fresh, *sorted(ids)]]
            r = await c.post("/v1/collections/soak/documents", json={"documents": docs})
            if r.status_code == 202:
                self.live.append(fresh)
        else:
            doc_id = self.live.pop(self.rng.randrange(len(self.live)))
            r = await c.delete(f"/v1/collections/soak/documents/{doc_id}")
        return r.status_code


def outcome(status: int | None) -> str:
    if status is None:
        return "conn_error"
    if 200 <= status < 300:
        return "ok"
    if status in (429, 503, 507):
        return str(status)
    return "5xx" if status >= 500 else "4xx"


class Window:
    def __init__(self) -> None:
        self.outcomes: Counter[str] = Counter()
        self.latency: dict[str, list[float]] = defaultdict(list)

    def record(self, kind: str, status: int | None, seconds: float) -> None:
        self.outcomes[outcome(status)] += 1
        if status is not None and 200 <= status < 300:
            self.latency[kind].append(seconds)


async def timed(load: Load, c: httpx.AsyncClient, kind: str, win: list[Window]) -> None:
    started = time.perf_counter()
    status: int | None
    try:
        status = await load.send(c, kind)
    except httpx.HTTPError:
        status = None
    win[0].record(kind, status, time.perf_counter() - started)


async def measure_peak(url: str, load: Load, concurrency: int, seconds: float) -> float:
    win = [Window()]
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(base_url=url, timeout=60) as c:

        async def client() -> None:
            while time.monotonic() < deadline:
                await timed(load, c, load.pick(), win)

        started = time.monotonic()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        took = time.monotonic() - started
    done = sum(win[0].outcomes.values())
    say(
        f"peak (closed loop, {concurrency} clients): {done / took:.1f} req/s;"
        f" {dict(win[0].outcomes)}"
    )
    return done / took


def summarize(win: Window, t: float, rss: float, depth: int, shed: int) -> dict[str, Any]:
    row: dict[str, Any] = {"t_s": round(t), "rss_mb": round(rss, 1), "docs_pending": depth,
                           "shed": shed, **win.outcomes}  # fmt: skip
    for kind in KINDS:
        lat = win.latency.get(kind)
        if lat:
            row[f"{kind}_p50_ms"] = round(1000 * statistics.median(lat), 1)
            row[f"{kind}_p99_ms"] = round(1000 * float(np.percentile(lat, 99)), 1)
    return row


async def soak(
    args: argparse.Namespace, server: ServerProcess, load: Load, rate: float
) -> list[dict[str, Any]]:
    assert server.proc is not None
    pid = server.proc.pid
    rows: list[dict[str, Any]] = []
    win = [Window()]
    inflight: set[asyncio.Task[None]] = set()
    shed = 0
    limits = httpx.Limits(max_connections=args.max_inflight, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=server.url, timeout=60, limits=limits) as c:
        started = time.monotonic()
        next_window = started + args.window
        n = 0
        while (now := time.monotonic()) < started + args.duration:
            n += 1
            due = started + n / rate  # fixed-rate open loop: sends do not wait for answers
            if due > now:
                await asyncio.sleep(due - now)
            if len(inflight) >= args.max_inflight:
                shed += 1
            else:
                task = asyncio.create_task(timed(load, c, load.pick(), win))
                inflight.add(task)
                task.add_done_callback(inflight.discard)
            if time.monotonic() >= next_window:
                depth = (await c.get("/v1/collections/soak")).json().get("documents_pending", -1)
                row = summarize(win[0], time.monotonic() - started, rss_mb(pid), depth, shed)
                rows.append(row)
                say(" ".join(f"{k}={v}" for k, v in row.items()))
                win[0], shed = Window(), 0
                next_window += args.window
        await asyncio.gather(*inflight, return_exceptions=True)
    return rows


def rss_slope(rows: list[dict[str, Any]], warmup_s: float) -> float:
    """Least-squares RSS growth in MB per hour over the windows after the warm-up."""
    pts = [(r["t_s"], r["rss_mb"]) for r in rows if r["t_s"] >= warmup_s]
    if len(pts) < 3:
        return float("nan")
    t, m = np.array(pts, dtype=float).T
    return float(np.polyfit(t, m, 1)[0] * 3600)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--duration", type=float, default=1800.0, help="soak seconds (default 30 min)")
    p.add_argument("--window", type=float, default=30.0, help="report every this many seconds")
    p.add_argument("--factor", type=float, default=2.0, help="x the measured peak")
    p.add_argument("--peak-s", type=float, default=15.0)
    p.add_argument("--concurrency", type=int, default=16, help="clients while measuring the peak")
    p.add_argument("--max-inflight", type=int, default=256)
    p.add_argument("--model", default="hashing-test")
    p.add_argument("--seed-docs", type=int, default=2000)
    p.add_argument("--batch", type=int, default=5, help="documents per ingest request")
    p.add_argument("--mix", default="0.7,0.15,0.15", help="query,ingest,delete shares")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds left out of the RSS slope")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    mix = tuple(float(x) for x in args.mix.split(","))
    assert len(mix) == 3, "--mix takes three shares"
    load = Load(random.Random(args.seed), (mix[0], mix[1], mix[2]), args.batch)
    say(load_note())
    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        env = server_env(EMBEDSTACK_DEFAULT_MODEL=args.model, EMBEDSTACK_ENABLE_TEST_MODELS="1")
        server = ServerProcess(Path(tmp) / "data", env, log_dir=Path(tmp)).start()
        try:
            with server.client() as c:
                assert c.post("/v1/collections", json={"name": "soak"}).status_code == 201
                for start in range(0, args.seed_docs, 500):
                    docs = []
                    for _ in range(min(500, args.seed_docs - start)):
                        load.next_id += 1
                        docs.append({"id": f"s{load.next_id}", "text": load.text()})
                    assert (
                        c.post(
                            "/v1/collections/soak/documents", json={"documents": docs}
                        ).status_code
                        == 202
                    )
                    load.live += [str(d["id"]) for d in docs]
            peak = asyncio.run(measure_peak(server.url, load, args.concurrency, args.peak_s))
            rate = args.factor * peak
            say(f"soak: {rate:.1f} req/s ({args.factor} x peak) for {args.duration:.0f} s")
            rows = asyncio.run(soak(args, server, load, rate))
            with server.client() as c:
                deadline = time.monotonic() + 300
                while (
                    c.get("/v1/collections/soak").json()["documents_pending"]
                    and time.monotonic() < deadline
                ):
                    time.sleep(1)
                described = c.get("/v1/collections/soak").json()
                healthy = c.get("/readyz").status_code == 200
            totals: Counter[str] = Counter()
            for r in rows:
                totals.update(
                    {
                        k: v
                        for k, v in r.items()
                        if k in ("ok", "429", "503", "507", "4xx", "5xx", "conn_error", "shed")
                    }
                )
            report = {
                "peak_rps": round(peak, 1), "rate_rps": round(rate, 1), "duration_s": args.duration,
                "totals": dict(totals), "healthy_after": healthy,
                "consistent_after": described["vectors"] == described["chunks"],
                "documents": described["documents"],
                "documents_pending": described["documents_pending"],
                "rss_first_mb": rows[0]["rss_mb"] if rows else None,
                "rss_last_mb": rows[-1]["rss_mb"] if rows else None,
                "rss_slope_mb_per_h": round(rss_slope(rows, args.warmup), 1),
                "query_p99_ms_by_window": [r.get("query_p99_ms") for r in rows],
                "windows": rows, "load": load_note(),
            }  # fmt: skip
            # plain print: rich would read the JSON's [lists] as markup and drop them
            print(orjson.dumps({k: v for k, v in report.items() if k != "windows"}).decode())
            if args.out:
                args.out.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
        finally:
            server.stop()


if __name__ == "__main__":
    main()
