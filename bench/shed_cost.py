"""Server CPU per refused query: what a 429 costs the server (and so the answers it could give).

A real server (the hashing test model, 20 documents) gets open-loop vector queries whose budget
(0.001 ms) is spent on arrival, so every one is refused; the server process's CPU seconds over
the step divided by the requests is the cost of one 429. Run it against another checkout
(PYTHONPATH=that/src) to compare: e.g. before the shedding middleware (serving/shed.py) the
refusal came from the route, after FastAPI parsed and validated the body.

    python bench/shed_cost.py --rate 300 --seconds 10
"""

from __future__ import annotations

import argparse
import asyncio
import random
import tempfile
import time
from pathlib import Path

import orjson
import uvloop

from common import Server, cpu_seconds, load_note, post, say, server_env, wait_jobs
from embedstack.loadtest.http import Endpoint
from goodput import Step, metric, open_loop


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rate", type=float, default=300.0, help="requests per second (300)")
    p.add_argument("--seconds", type=float, default=10.0, help="length of the step (10)")
    args = p.parse_args()
    env = server_env(EMBEDSTACK_ENABLE_TEST_MODELS="true", EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    path = "/v1/collections/kb/query"
    with tempfile.TemporaryDirectory(prefix="embedstack-shedcost-") as tmp, Server(
        Path(tmp), env
    ) as server, server.client() as client:  # fmt: skip
        post(client, "/v1/collections", {"name": "kb", "model": "hashing-test"})
        docs = [{"id": f"d{i}", "text": f"document {i} about vectors"} for i in range(20)]
        wait_jobs(
            client, [post(client, "/v1/collections/kb/documents", {"documents": docs})["job_id"]]
        )
        first = post(client, path, {"text": "hello", "k": 1})
        emb = post(client, "/v1/embeddings", {"input": "x", "model": "hashing-test"})
        dim = len(emb["data"][0]["embedding"])
        rng = random.Random(0)
        bodies = [
            orjson.dumps({"vector": [rng.random() for _ in range(dim)],
                          "space_id": first["space_id"], "k": 10, "budget_ms": 0.001})
            for _ in range(50)
        ]  # fmt: skip
        assert server.proc is not None
        pid = server.proc.pid
        step = Step("refused", f"{args.rate:g}/s", args.seconds, 0.1)
        cpu, started = cpu_seconds(pid), time.time()
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(open_loop(Endpoint(server.url, {}), path, bodies, args.rate, step))
        cpu, wall = cpu_seconds(pid) - cpu, time.time() - started
        early = metric(client, "embedstack_shed_early_total")
    n = len(step.lat) + step.shed + step.other
    say(f"{n} requests in {wall:.1f} s: {step.shed} refused (429; {early:.0f} before the body "
        f"was parsed), {len(step.lat)} answered, {step.other} other")  # fmt: skip
    say(f"[bold]server CPU per request: {1000 * cpu / max(1, n):.3f} ms[/] ({cpu:.2f} s); "
        f"{load_note()}")  # fmt: skip


if __name__ == "__main__":
    main()
