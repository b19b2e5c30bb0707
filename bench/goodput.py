"""Goodput under overload: text queries against a latency budget, from 1x to 4x the peak.

A real server (the bundled all-MiniLM-L6-v2, pinned to onnx-fp32 unless --backend says otherwise)
serves a collection of the committed python-doc sections (tests/data/pydoc_sections.jsonl).
Queries are 4-12-word snippets of those sections. The load generator is a small asyncio
HTTP/1.1 client on keep-alive connections (far cheaper per request than httpx, so the client
takes less of the machine from the server).

1. Peak: closed-loop steps with --calibrate clients; the step with the most goodput (answers
   within the budget per second) is the peak: its client count C and its goodput G.
2. Closed loop at 1x, 2x, 3x, 4x C clients; open loop (Poisson arrivals) at 1x, 2x, 3x, 4x G
   per second.
3. Baseline, same run: closed loop at 4x C with a budget of --no-budget-ms on every request,
   i.e. admission that never sheds (what the server did before), judged against the budget.
4. The peak step again: how far the machine's own load drifted during the run.

Client policies. Closed loop: each client sends its next query when the last one is answered;
after a 429 it waits the answer's Retry-After seconds, as embedstack's own client does
(--retry-policy pause: a fixed --retry-pause-ms instead, a client that ignores the header).
Open loop: Poisson arrivals that never wait for answers and never retry; latency counts from the
scheduled send time (no coordinated omission). The client runs on uvloop in this process; its CPU
and the server's are printed per step (they share the machine's cores).

Per step: sent/s, admitted QPS, p50/p99 of admitted (200) answers (client-side; the server's own
took_ms p99 too), 429 share, goodput, goodput against the peak, server and client CPU (cores)
and the 1-minute load average. Target: p99 under the budget at every step; goodput at 4x >= 90%
of peak.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import orjson
import uvloop

from common import (
    Server,
    cpu_seconds,
    load_note,
    post,
    pydoc_docs,
    say,
    server_env,
    table,
    wait_jobs,
)
from embedstack.loadtest.http import Connection, Endpoint, ExchangeError

MODEL = "all-MiniLM-L6-v2"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--docs", type=int, default=213, help="pydoc sections to load (all: 213)")
    p.add_argument("--step-s", type=float, default=10.0, help="seconds per load step (10)")
    p.add_argument("--budget-ms", type=float, default=100.0, help="query budget (100, the SLO)")
    p.add_argument("--calibrate", default="2,4,8,16", help="closed-loop client counts for the peak")
    p.add_argument("--multiples", default="1,2,3,4", help="load steps as multiples of the peak")
    p.add_argument("--no-budget-ms", type=float, default=60_000.0,
                   help="budget of the baseline step (admission that never sheds)")  # fmt: skip
    p.add_argument("--backend", default="onnx-fp32", help="backend pinned for the model")
    p.add_argument("--skip-open", action="store_true", help="closed-loop steps only")
    p.add_argument("--retry-policy", choices=["retry-after", "pause"], default="retry-after",
                   help="closed loop after a 429: wait Retry-After (default) or pause")  # fmt: skip
    p.add_argument("--retry-pause-ms", type=float, default=10.0,
                   help="the fixed pause of --retry-policy pause (10)")  # fmt: skip
    return p.parse_args()


@dataclass
class Step:
    name: str
    offered: str
    seconds: float
    budget_s: float
    lat: list[float] = field(default_factory=list)  # of 200 answers, seconds
    took: list[float] = field(default_factory=list)  # server-reported ms of 200 answers
    shed: int = 0  # 429
    other: int = 0  # anything else (errors)
    sample: str = ""  # the first refusal, for the log
    error: str = ""  # the first answer neither 200 nor 429
    server_cores: float = float("nan")  # server CPU seconds per second of the step
    client_cores: float = float("nan")  # this process's (the load generator's)
    load: float = float("nan")  # 1-minute load average at the end of the step

    def row(self, peak: float | None) -> list[object]:
        n_ok = len(self.lat)
        total = n_ok + self.shed + self.other
        lat = np.asarray(self.lat) * 1000 if self.lat else np.asarray([np.nan])
        good = sum(1 for x in self.lat if x <= self.budget_s) / self.seconds
        return [
            self.name, self.offered, total / self.seconds, n_ok / self.seconds,
            float(np.percentile(lat, 50)), float(np.percentile(lat, 99)),
            float(np.percentile(self.took, 99)) if self.took else float("nan"),
            100.0 * self.shed / max(1, total), self.other, good,
            f"{100 * good / peak:.0f}%" if peak else "-",
            self.server_cores, self.client_cores, self.load,
        ]  # fmt: skip

    @property
    def goodput(self) -> float:
        return sum(1 for x in self.lat if x <= self.budget_s) / self.seconds

    def record(self, status: int, body: bytes, seconds: float) -> None:
        if status == 200:
            self.lat.append(seconds)
            self.took.append(float(orjson.loads(body)["took_ms"]))
        elif status == 429:
            self.shed += 1
        else:
            self.other += 1
        if status == 429 and not self.sample:
            self.sample = f"{status} {body[:200].decode(errors='replace')}"
        if status not in (200, 429) and not self.error:
            self.error = f"{status} {body[:200].decode(errors='replace')}"


COLUMNS = ["step", "offered", "sent/s", "admitted QPS", "p50 ms", "p99 ms", "server p99 ms",
           "429 %", "errors", "goodput/s", "vs peak", "server cores", "client cores",
           "load 1m"]  # fmt: skip


async def closed_loop(
    endpoint: Endpoint, path: str, bodies: list[bytes], clients: int, step: Step,
    pause: float | None = None,
) -> None:  # fmt: skip
    """`clients` connections, each sending its next query as soon as the last one answered;
    after a 429 it waits the answer's Retry-After seconds (`pause` seconds if given), never
    past the end of the step."""
    end = time.perf_counter() + step.seconds
    rng = random.Random(clients)

    async def client() -> None:
        conn = Connection(endpoint)
        try:
            while time.perf_counter() < end:
                body = bodies[rng.randrange(len(bodies))]
                t = time.perf_counter()
                status, data = await conn.request("POST", path, body)
                step.record(status, data, time.perf_counter() - t)
                if status == 429:
                    wait = conn.retry_after if pause is None else pause
                    await asyncio.sleep(min(wait, max(0.0, end - time.perf_counter())))
        finally:
            conn.close()

    await asyncio.gather(*(client() for _ in range(clients)))


async def open_loop(
    endpoint: Endpoint, path: str, bodies: list[bytes], rate: float, step: Step,
    max_conns: int = 512,
) -> None:  # fmt: skip
    """Poisson arrivals at `rate`/s for step.seconds; latency from the scheduled send time."""
    rng = random.Random(int(rate))
    idle: list[Connection] = []
    opened = 0
    freed = asyncio.Condition()
    tasks: set[asyncio.Task[None]] = set()

    async def one(scheduled: float, body: bytes) -> None:
        nonlocal opened
        async with freed:
            while not idle and opened >= max_conns:
                await freed.wait()
            if idle:
                conn = idle.pop()
            else:
                opened += 1
                conn = Connection(endpoint)
        try:
            status, data = await conn.request("POST", path, body)
        except ExchangeError:  # the connection closed itself: reused, it reconnects
            status, data = 599, b""
        step.record(status, data, time.perf_counter() - scheduled)
        async with freed:
            idle.append(conn)
            freed.notify()

    start = time.perf_counter()
    t = start
    while t < start + step.seconds:
        t += rng.expovariate(rate)
        delay = t - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(one(t, bodies[rng.randrange(len(bodies))]))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(tasks, timeout=60)
    for conn in idle:
        conn.close()


# -- the run ---------------------------------------------------------------------------------
def queries(docs: list[tuple[str, str]], n: int = 1000) -> list[str]:
    rng = random.Random(0)
    words = [w for _, t in docs for w in t.split() if w.isalpha()]
    return [" ".join(rng.choices(words, k=rng.randint(4, 12))) for _ in range(n)]


def metric(client: httpx.Client, name: str) -> float:
    text = client.get("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def main() -> None:
    args = parse_args()
    say(f"bench/goodput.py {' '.join(sys.argv[1:])}\n{load_note()}")
    budget_s = args.budget_ms / 1000.0
    pause = args.retry_pause_ms / 1000.0 if args.retry_policy == "pause" else None
    policy = (
        "closed loop: after a 429 a client waits its Retry-After"
        if pause is None
        else f"closed loop: after a 429 a client pauses {args.retry_pause_ms:g} ms (ignores "
        "Retry-After)"
    ) + "; open loop: Poisson arrivals, no retries, latency from the scheduled send time"
    env = server_env(
        EMBEDSTACK_MODEL_BACKENDS=orjson.dumps({MODEL: args.backend}).decode(),
        EMBEDSTACK_QUERY_BUDGET_MS=str(args.budget_ms),
    )
    docs = pydoc_docs(args.docs)
    bodies = [orjson.dumps({"text": q, "k": 10}) for q in queries(docs)]
    path = "/v1/collections/docs/query"
    with tempfile.TemporaryDirectory(prefix="embedstack-goodput-") as tmp, Server(
        Path(tmp), env
    ) as server, server.client() as client:  # fmt: skip
        post(client, "/v1/collections", {"name": "docs", "model": MODEL})
        job = post(client, "/v1/collections/docs/documents",
                   {"documents": [{"id": f"s{i}", "text": x, "metadata": {"title": t}}
                                  for i, (t, x) in enumerate(docs)]})["job_id"]  # fmt: skip
        wait_jobs(client, [job])
        say(f"{len(docs)} docs indexed; warming up ... {load_note()}")
        endpoint = Endpoint(server.url, {})
        for b in bodies[:50]:
            warm = {"content-type": "application/json", "X-Request-Budget-Ms": "60000"}
            r = client.post(path, content=b, headers=warm)  # not measured: a roomy budget
            if r.status_code != 200:
                raise RuntimeError(f"warm-up query -> {r.status_code}: {r.text[:300]}")

        assert server.proc is not None
        pid = server.proc.pid

        def run(step: Step, coro_of: object) -> Step:
            server_cpu, client_cpu, started = cpu_seconds(pid), time.process_time(), time.time()
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                runner.run(coro_of)  # type: ignore[arg-type]
            wall = time.time() - started
            step.server_cores = (cpu_seconds(pid) - server_cpu) / wall
            step.client_cores = (time.process_time() - client_cpu) / wall
            step.load = os.getloadavg()[0]
            say(f"  {step.name} {step.offered}: goodput {step.goodput:.0f}/s, "
                f"{len(step.lat)} ok, {step.shed} shed ... {load_note()}"
                f"\n    {step.sample}\n    {step.error}")  # fmt: skip
            return step

        calib: list[Step] = []
        for c in [int(x) for x in args.calibrate.split(",") if x]:
            s = Step("peak search, closed", f"{c} clients", args.step_s, budget_s)
            calib.append(run(s, closed_loop(endpoint, path, bodies, c, s, pause)))
        best = max(calib, key=lambda s: s.goodput)
        peak_clients = int(best.offered.split()[0])
        peak = best.goodput
        if peak <= 0:
            raise SystemExit("no query was answered within the budget: nothing to measure")
        say(f"peak: {peak:.0f} answers/s within {args.budget_ms:g} ms at {peak_clients} clients")
        steps: list[Step] = []
        multiples = [float(m) for m in args.multiples.split(",") if m]
        for m in multiples:
            c = max(1, round(m * peak_clients))
            s = Step(f"closed {m:g}x", f"{c} clients", args.step_s, budget_s)
            steps.append(run(s, closed_loop(endpoint, path, bodies, c, s, pause)))
        if not args.skip_open:
            for m in multiples:
                s = Step(f"open {m:g}x", f"{m * peak:.0f}/s", args.step_s, budget_s)
                steps.append(run(s, open_loop(endpoint, path, bodies, m * peak, s)))
        c = max(1, round(multiples[-1] * peak_clients))
        base = Step(f"closed {multiples[-1]:g}x, never shed", f"{c} clients", args.step_s,
                    budget_s)  # fmt: skip
        unshed = Endpoint(server.url, {"X-Request-Budget-Ms": f"{args.no_budget_ms:g}"})
        steps.append(run(base, closed_loop(unshed, path, bodies, c, base, pause)))
        again = Step("peak again (drift)", f"{peak_clients} clients", args.step_s, budget_s)
        steps.append(run(again, closed_loop(endpoint, path, bodies, peak_clients, again, pause)))
        shed = metric(client, "embedstack_shed_total")
        early = metric(client, "embedstack_shed_early_total")
        dropped = metric(client, "embedstack_deadline_dropped_total")
        missed = metric(client, 'embedstack_query_budget_total{outcome="missed"}')
        limit = metric(client, f'embedstack_query_concurrency_limit{{model="{MODEL}"}}')
    say(f"done. {load_note()}")
    table(
        f"Text queries ({MODEL}, {args.backend}), budget {args.budget_ms:g} ms, {len(docs)} "
        f"docs, {args.step_s:g} s steps; peak {peak:.0f}/s at {peak_clients} clients\n{policy}",
        COLUMNS,
        [s.row(peak) for s in [*calib, *steps]],
    )
    say(f"server: {shed:.0f} refused at admission ({early:.0f} of them before the body was "
        f"parsed), {dropped:.0f} dropped past their deadline, "
        f"{missed:.0f} answered past the budget (server-side); adaptive bound on queries in "
        f"flight at the end: {limit:.0f}")  # fmt: skip
    top = [s for s in steps if s.name.startswith(("closed", "open")) and "never" not in s.name]
    at_max = [s for s in top if s.name.endswith(f"{multiples[-1]:g}x")]
    for s in at_max:
        say(f"[bold]RATIO goodput {s.name} / peak = {s.goodput / peak:.2f}[/]")
    worst = max(float(np.percentile(s.lat, 99)) for s in top if s.lat) * 1000
    say(f"[bold]worst admitted p99 over the load steps: {worst:.1f} ms "
        f"(budget {args.budget_ms:g} ms)[/]")  # fmt: skip
    say(f"[bold]RATIO goodput never-shed {base.offered} / peak = {base.goodput / peak:.2f}, "
        f"its p99 {float(np.percentile(base.lat, 99)) * 1000:.0f} ms[/]")  # fmt: skip


if __name__ == "__main__":
    main()
