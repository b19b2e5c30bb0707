"""What a cluster API node adds to each query for feedback and drift (serving/cluster_obs.py
`observe`: the query's feedback record and, until the space's baseline is full, its drift
signals, in one Redis pipeline), against a plain Redis GET on the same connection; and the cost
of reading a space's feedback rates. A redis-server on loopback (the `brokers` extra).

    python bench/cluster_observe.py --queries 2000
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    import redis

    from embedstack.cluster.observed import ClusterBaselines, ClusterFeedback, SharedDrift
    from embedstack.infra.local import start_redis

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    n = parser.parse_args().queries
    with tempfile.TemporaryDirectory() as tmp, start_redis(Path(tmp)) as server:
        r = redis.Redis.from_url(f"redis://{server.address}/0")
        feedback = ClusterFeedback(r, "bench", 100_000, 10)
        drift = SharedDrift(ClusterBaselines(r, "bench", 500), 500, 100, 0.25)
        docs = [f"doc-{i}" for i in range(10)]

        def observe() -> None:  # as ClusterObs.observe
            with r.pipeline(transaction=False) as pipe:
                feedback.remember("c", "topic", "space", docs, pipe)
                appended = drift.record("topic", "space", 0.9, 1.0, pipe)
                answers = pipe.execute()
            if appended:
                drift.appended("topic", "space", int(answers[-1]), 0.9, 1.0)

        for _ in range(200):  # warm up; the baseline fills (500) during the timed part
            observe()
            r.get("x")
        began = time.perf_counter()
        for _ in range(n):
            r.get("x")
        get_us = (time.perf_counter() - began) / n * 1e6
        took = []
        for _ in range(n):
            began = time.perf_counter()
            observe()
            took.append(time.perf_counter() - began)
        us = np.asarray(took) * 1e6
        p50, p99 = np.percentile(us, 50), np.percentile(us, 99)
        began = time.perf_counter()
        for _ in range(200):
            feedback.stats("topic", "space")
        stats_us = (time.perf_counter() - began) / 200 * 1e6
    print(f"redis GET {get_us:.0f} us; observe p50 {p50:.0f} us, p99 {p99:.0f} us "
          f"({p50 / get_us:.1f}x a GET); feedback stats over {n + 200} queries {stats_us:.0f} us; "
          f"load average {os.getloadavg()[0]:.1f}")  # fmt: skip


if __name__ == "__main__":
    main()
