"""Queue throughput per backend: enqueue, then lease + ack, against the embedded SQLite queue.

    .venv/bin/python bench/queue_backends.py                # 2000 jobs, 1 and 4 threads
    .venv/bin/python bench/queue_backends.py --jobs 5000 --threads 1 8

Starts its own brokers on loopback (infra/local: tansu for Kafka, redis-server with appendfsync
always) in a temporary folder, so every backend runs in the same process and the same minute;
the SQLite queue's file is in the same temporary folder (synchronous=FULL, as served). Each
backend gets a fresh topic / key prefix. Enqueue is one call per job from one thread (as the
server's write path does it: durable before the 202); lease + ack is `--threads` workers
draining the queue. Prints jobs/s, the ratio to SQLite, and the load average. (Not named
bench/queue.py: bench/ is on sys.path, and that name would shadow the stdlib `queue`.)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import fmt, load_note, say, table  # noqa: E402
from embedstack.errors import Unavailable  # noqa: E402
from embedstack.infra.local import start_kafka, start_redis  # noqa: E402
from embedstack.ingest.brokers.kafka import KafkaQueue  # noqa: E402
from embedstack.ingest.brokers.redis_streams import RedisStreamsQueue  # noqa: E402
from embedstack.ingest.queue import Queue, SqliteQueue  # noqa: E402


def drain(queue: Queue, threads: int, jobs: int, timeout: float = 600.0) -> float:
    """Seconds for `threads` workers to lease and ack `jobs` jobs (bounded by `timeout`)."""
    done = [0] * threads
    refused: list[str] = []
    deadline = time.monotonic() + timeout

    def work(i: int) -> None:
        empty = 0
        while sum(done) < jobs and time.monotonic() < deadline and empty < 200:
            job = queue.lease(f"bench-{i}", 60.0)
            if job is None:  # a broker consumer may still be fetching: bounded retries
                empty += 1
                time.sleep(0.005)
                continue
            empty = 0
            assert job.lease_id is not None
            for _ in range(10):  # as the ingest worker does: a refused queue call is retried
                try:
                    queue.ack(job.id, job.lease_id, {})
                    break
                except Unavailable as exc:
                    refused.append(str(exc))
            done[i] += 1

    start = time.perf_counter()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    if refused:
        say(f"  {len(refused)} acks refused and retried, e.g. {refused[0]}")
    if sum(done) != jobs:
        raise SystemExit(f"only {sum(done)} of {jobs} jobs were leased and acked")
    return time.perf_counter() - start


def run(open_queue: Callable[[], Queue], jobs: int, threads: int) -> tuple[float, float]:
    """(enqueue jobs/s, lease+ack jobs/s) on a fresh queue."""
    queue = open_queue()
    try:
        payload = {"collection": "kb", "documents": [f"d{i}" for i in range(8)]}
        start = time.perf_counter()
        for _ in range(jobs):
            queue.enqueue(payload)
        enqueue_s = time.perf_counter() - start
        return jobs / enqueue_s, jobs / drain(queue, threads, jobs)
    finally:
        queue.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    args = ap.parse_args()
    say(f"before: {load_note()}")
    with tempfile.TemporaryDirectory(prefix="bench-queue-") as tmp:
        root = Path(tmp)
        with start_kafka(root / "kafka") as kafka, start_redis(root / "redis") as redis_server:

            def sqlite() -> Queue:
                return SqliteQueue(root / f"{uuid.uuid4().hex}.db")

            def redis_streams() -> Queue:
                url = f"redis://{redis_server.address}"
                return RedisStreamsQueue.connect(url, f"bench-{uuid.uuid4().hex[:8]}")

            def kafka_topic() -> Queue:
                name = f"bench-{uuid.uuid4().hex[:8]}"
                state = SqliteQueue(root / f"{name}.db")
                return KafkaQueue(kafka.address, state, topic=name, group=name, partitions=4)

            backends = [("sqlite", sqlite), ("redis", redis_streams), ("kafka", kafka_topic)]
            rows = []
            for threads in args.threads:
                base: tuple[float, float] | None = None
                for name, opener in backends:
                    enq, lease_ack = run(opener, args.jobs, threads)
                    base = base or (enq, lease_ack)
                    rows.append([name, threads, fmt(enq), fmt(enq / base[0]),
                                 fmt(lease_ack), fmt(lease_ack / base[1])])  # fmt: skip
    table(
        f"queue throughput, {args.jobs} jobs (ratio: to sqlite at the same thread count)",
        ["backend", "lease threads", "enqueue/s", "x sqlite", "lease+ack/s", "x sqlite"],
        rows,
    )
    say(f"after: {load_note()}")


if __name__ == "__main__":
    main()
