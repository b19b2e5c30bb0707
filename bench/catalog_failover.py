"""The replicated catalog (cluster/coordination.py) against one plain Redis, same run: the
latency of an acknowledged catalog write (HSET, plus WAIT 1 on the replicated one), and how
long the first write waits when the primary is killed -9 (Sentinel failover), with a check
that every write acknowledged before the kill is on the new primary.

    python bench/catalog_failover.py --runs 3 --writes 300
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import table


def _latencies(client: Any, writes: int) -> list[float]:
    out = []
    for i in range(writes):
        t0 = time.monotonic()
        client.hset("bench", str(i), "v")
        out.append((time.monotonic() - t0) * 1000)
    return sorted(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--writes", type=int, default=300)
    args = parser.parse_args()

    from embedstack.cluster.coordination import catalog_client
    from embedstack.infra.local import start_redis, start_redis_ha

    rows = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            with start_redis(root / "plain") as plain, start_redis_ha(root / "ha") as ha:
                one = _latencies(catalog_client(f"redis://{plain.address}/0"), args.writes)
                client = catalog_client(ha.url(0), failover_s=30)
                rep = _latencies(client, args.writes)
                old = ha.primary()
                old.kill()
                t0 = time.monotonic()
                client.hset("bench", "after", "v")
                pause = time.monotonic() - t0
                kept = "yes" if client.hlen("bench") == args.writes + 1 else "NO"
        p = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]  # noqa: E731
        rows.append((
            f"run {run}", p(one, 0.5), p(one, 0.99), p(rep, 0.5), p(rep, 0.99),
            p(rep, 0.5) / p(one, 0.5), pause, kept,
        ))  # fmt: skip
    table(
        f"catalog writes, {args.writes} per run; load average {os.getloadavg()[0]:.1f}",
        ["run", "plain p50 ms", "plain p99 ms", "replicated p50 ms", "replicated p99 ms",
         "p50 ratio", "first write after kill -9 s", "acked writes all kept"],
        rows,
    )  # fmt: skip


if __name__ == "__main__":
    main()
