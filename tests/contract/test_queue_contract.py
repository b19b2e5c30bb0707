"""Contract tests for `embedstack.ingest.queue.Queue`.

Every test that takes the `queue` fixture runs against each implementation in `_BACKENDS`; it
uses only the protocol, plus the `advance` fixture to move time forward (a fake clock where the
implementation accepts one, a real sleep otherwise; keep advances <= 0.3 s). Each queue is built
with max_attempts=3. Tests named `test_sqlite_*` are specific to `SqliteQueue`. The broker
backends run on the real brokers of the `kafka_broker` and `redis_broker` fixtures, each test on
its own topic and group (Kafka) or key prefix (Redis); their own differences are tested in
tests/integration/test_queue_brokers.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from embedstack.errors import Conflict, InvalidInput, NotFound, Unavailable
from embedstack.infra.local import LocalProcess
from embedstack.ingest.brokers.kafka import KafkaQueue
from embedstack.ingest.brokers.redis_streams import RedisStreamsQueue
from embedstack.ingest.queue import Job, Queue, SqliteQueue

MAX_ATTEMPTS = 3
_BACKENDS = ["sqlite", "redis", "kafka"]


class FakeClock:
    """A wall clock that only moves when told to."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Harness:
    queue: Queue
    advance: Callable[[float], None]


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A scratch folder on tmpfs where there is one: synchronous=FULL costs an fsync per
    write, which on a busy disk turns the 200-job tests into seconds. Durability tests use
    tmp_path instead."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=shm, prefix="embedstack-queue-") as d:
        yield Path(d)


@pytest.fixture(params=_BACKENDS)
def harness(request: pytest.FixtureRequest, fast_dir: Path) -> Iterator[Harness]:
    if request.param == "sqlite":
        clock = FakeClock()
        q = SqliteQueue(fast_dir / "queue.db", max_attempts=MAX_ATTEMPTS, clock=clock)
        yield Harness(q, clock.advance)
        q.close()
    elif request.param == "redis":
        clock = FakeClock()
        server: LocalProcess = request.getfixturevalue("redis_broker")
        name = f"contract-{uuid.uuid4().hex[:12]}"
        url = f"redis://{server.address}"
        with RedisStreamsQueue.connect(url, name, max_attempts=MAX_ATTEMPTS, clock=clock) as rq:
            yield Harness(rq, clock.advance)
    elif request.param == "kafka":
        clock = FakeClock()
        broker: LocalProcess = request.getfixturevalue("kafka_broker")
        state = SqliteQueue(fast_dir / "state.db", max_attempts=MAX_ATTEMPTS, clock=clock)
        name = f"contract-{uuid.uuid4().hex[:12]}"
        with KafkaQueue(broker.address, state, topic=name, group=name, partitions=2) as kq:
            yield Harness(kq, clock.advance)
    else:  # pragma: no cover - a new backend must be wired in here
        raise AssertionError(f"unknown queue backend {request.param!r}")


@pytest.fixture
def queue(harness: Harness) -> Queue:
    return harness.queue


@pytest.fixture
def advance(harness: Harness) -> Callable[[float], None]:
    return harness.advance


def _lease(queue: Queue, worker: str = "w1", vt: float = 30.0) -> Job:
    job = queue.lease(worker, vt)
    assert job is not None, "expected a job to be available"
    assert job.lease_id is not None
    return job


def _drain_order(queue: Queue) -> list[str]:
    order = []
    while (job := queue.lease("w", 30.0)) is not None:
        order.append(job.id)
    return order


# -- contract ---------------------------------------------------------------------------------


def test_protocol_is_implemented(queue: Queue) -> None:
    assert isinstance(queue, Queue)


def test_enqueue_then_lease_round_trips_payload(queue: Queue) -> None:
    payload: dict[str, Any] = {"doc": "d1", "n": 3, "nested": {"a": [1, 2.5, None, "x"]}}
    job_id = queue.enqueue(payload)
    queued = queue.get(job_id)
    assert (queued.status, queued.attempts, queued.lease_id) == ("queued", 0, None)
    assert queued.max_attempts == MAX_ATTEMPTS

    job = _lease(queue)
    assert job.id == job_id
    assert job.payload == payload
    assert job.status == "leased"
    assert job.attempts == 1
    assert queue.get(job_id).lease_id == job.lease_id


def test_generated_ids_are_unique(queue: Queue) -> None:
    ids = {queue.enqueue({"i": i}) for i in range(20)}
    assert len(ids) == 20


def test_lease_on_empty_queue_returns_none(queue: Queue) -> None:
    assert queue.lease("w1", 30.0) is None


def test_fifo_within_priority_and_higher_priority_first(queue: Queue) -> None:
    queue.enqueue({}, job_id="low-1")
    queue.enqueue({}, job_id="low-2", priority=-1)
    queue.enqueue({}, job_id="mid-1")
    queue.enqueue({}, job_id="high-1", priority=5)
    queue.enqueue({}, job_id="mid-2")
    queue.enqueue({}, job_id="high-2", priority=5)
    queue.enqueue({}, job_id="mid-3")
    assert _drain_order(queue) == ["high-1", "high-2", "low-1", "mid-1", "mid-2", "mid-3", "low-2"]


def test_lease_hides_job_from_other_workers(queue: Queue) -> None:
    queue.enqueue({}, job_id="only")
    assert _lease(queue, "w1").id == "only"
    assert queue.lease("w2", 30.0) is None
    assert queue.lease("w1", 30.0) is None


def test_expired_lease_is_leasable_again_as_new_attempt(
    queue: Queue, advance: Callable[[float], None]
) -> None:
    queue.enqueue({}, job_id="j")
    first = _lease(queue, "w1", vt=0.1)
    assert queue.lease("w2", 0.1) is None
    advance(0.25)
    second = _lease(queue, "w2", vt=30.0)
    assert second.id == "j"
    assert second.attempts == first.attempts + 1
    assert second.lease_id != first.lease_id
    assert queue.get("j").lease_id == second.lease_id


def test_extend_keeps_job_hidden(queue: Queue, advance: Callable[[float], None]) -> None:
    queue.enqueue({}, job_id="j")
    job = _lease(queue, "w1", vt=0.1)
    assert job.lease_id is not None
    assert queue.extend("j", job.lease_id, 30.0) is True
    advance(0.25)
    assert queue.lease("w2", 30.0) is None
    assert queue.extend("j", "not-the-lease", 30.0) is False
    assert queue.ack("j", job.lease_id, {"ok": True}) is True


def test_stale_lease_is_refused_after_another_worker_releases(
    queue: Queue, advance: Callable[[float], None]
) -> None:
    queue.enqueue({"k": 1}, job_id="j")
    old = _lease(queue, "w1", vt=0.1)
    advance(0.25)
    new = _lease(queue, "w2", vt=30.0)
    assert old.lease_id is not None and new.lease_id is not None
    before = queue.get("j")

    assert queue.ack("j", old.lease_id, {"by": "w1"}) is False
    assert queue.fail("j", old.lease_id, "boom from w1") == "stale"
    assert queue.extend("j", old.lease_id, 30.0) is False
    after = queue.get("j")
    assert (after.status, after.lease_id, after.attempts) == ("leased", new.lease_id, 2)
    assert (after.result, after.error) == (None, None)
    assert after == before

    assert queue.ack("j", new.lease_id, {"by": "w2"}) is True
    done = queue.get("j")
    assert (done.status, done.result) == ("done", {"by": "w2"})


def test_ack_marks_done_once(queue: Queue) -> None:
    queue.enqueue({}, job_id="j")
    job = _lease(queue)
    assert job.lease_id is not None
    assert queue.ack("j", job.lease_id, {"chunks": 7}) is True
    done = queue.get("j")
    assert (done.status, done.result, done.lease_id) == ("done", {"chunks": 7}, None)
    assert queue.ack("j", job.lease_id, {"chunks": 8}) is False
    assert queue.fail("j", job.lease_id, "late") == "stale"
    assert queue.get("j").result == {"chunks": 7}
    assert queue.lease("w2", 30.0) is None


def test_fail_retries_until_max_attempts_then_dead_letters(queue: Queue) -> None:
    queue.enqueue({"doc": "bad"}, job_id="j")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        job = _lease(queue)
        assert job.attempts == attempt
        assert job.lease_id is not None
        expected = "queued" if attempt < MAX_ATTEMPTS else "dead"
        assert queue.fail("j", job.lease_id, f"boom {attempt}") == expected
        state = queue.get("j")
        assert (state.status, state.error, state.lease_id) == (expected, f"boom {attempt}", None)
    assert queue.lease("w1", 30.0) is None
    dead = queue.dead_letters()
    assert [j.id for j in dead] == ["j"]
    assert dead[0].error == f"boom {MAX_ATTEMPTS}"
    assert dead[0].payload == {"doc": "bad"}
    assert dead[0].attempts == MAX_ATTEMPTS


def test_fail_with_retry_delay_hides_job_until_delay_passes(
    queue: Queue, advance: Callable[[float], None]
) -> None:
    queue.enqueue({}, job_id="j")
    job = _lease(queue)
    assert job.lease_id is not None
    assert queue.fail("j", job.lease_id, "transient", retry_delay=0.2) == "queued"
    assert queue.get("j").status == "queued"
    assert queue.lease("w1", 30.0) is None
    advance(0.3)
    again = _lease(queue)
    assert (again.id, again.attempts) == ("j", 2)


def test_lease_expiring_on_last_attempt_dead_letters(
    queue: Queue, advance: Callable[[float], None]
) -> None:
    queue.enqueue({}, job_id="poison")
    for attempt in range(1, MAX_ATTEMPTS + 1):
        assert _lease(queue, vt=0.05).attempts == attempt
        advance(0.1)
    assert queue.lease("w1", 30.0) is None
    dead = queue.get("poison")
    assert dead.status == "dead"
    assert dead.error  # says why
    assert [j.id for j in queue.dead_letters()] == ["poison"]


def test_retry_dead_requeues_with_attempts_reset(queue: Queue) -> None:
    queue.enqueue({"x": 1}, job_id="j")
    for _ in range(MAX_ATTEMPTS):
        job = _lease(queue)
        assert job.lease_id is not None
        queue.fail("j", job.lease_id, "boom")
    assert queue.get("j").status == "dead"

    queue.retry_dead("j")
    requeued = queue.get("j")
    assert (requeued.status, requeued.attempts, requeued.lease_id) == ("queued", 0, None)
    assert queue.dead_letters() == []
    job = _lease(queue)
    assert (job.id, job.attempts, job.payload) == ("j", 1, {"x": 1})


def test_retry_dead_rejects_unknown_and_live_jobs(queue: Queue) -> None:
    with pytest.raises(NotFound):
        queue.retry_dead("nope")
    queue.enqueue({}, job_id="alive")
    with pytest.raises(Conflict):
        queue.retry_dead("alive")


def test_enqueue_is_idempotent_on_job_id(queue: Queue) -> None:
    assert queue.enqueue({"v": 1}, job_id="same") == "same"
    assert queue.enqueue({"v": 2}, job_id="same", priority=9) == "same"
    assert queue.get("same").payload == {"v": 1}
    assert queue.counts()["queued"] == 1
    job = _lease(queue)
    assert job.lease_id is not None
    # Re-enqueueing a job in flight or done neither duplicates nor resets it.
    assert queue.enqueue({"v": 3}, job_id="same") == "same"
    assert queue.get("same").status == "leased"
    queue.ack("same", job.lease_id, {})
    assert queue.enqueue({"v": 4}, job_id="same") == "same"
    assert queue.get("same").status == "done"
    assert queue.lease("w2", 30.0) is None


def test_get_unknown_id_raises_not_found(queue: Queue) -> None:
    with pytest.raises(NotFound, match="no-such-job"):
        queue.get("no-such-job")


def test_non_json_payload_is_rejected(queue: Queue) -> None:
    with pytest.raises(InvalidInput):
        queue.enqueue({"bad": object()})
    assert queue.counts()["queued"] == 0


def test_counts_track_every_status(queue: Queue) -> None:
    assert queue.counts() == {"queued": 0, "leased": 0, "done": 0, "dead": 0}
    for i in range(5):
        queue.enqueue({}, job_id=f"j{i}")
    done = _lease(queue)
    assert done.lease_id is not None
    queue.ack(done.id, done.lease_id, {})
    _lease(queue)
    for _ in range(MAX_ATTEMPTS):
        job = _lease(queue)
        assert job.lease_id is not None
        queue.fail(job.id, job.lease_id, "boom")
    assert queue.counts() == {"queued": 2, "leased": 1, "done": 1, "dead": 1}


def _worker_loop(
    queue: Queue, name: str, sink: list[tuple[str, str, bool]], work_s: float = 0.0
) -> None:
    while (job := queue.lease(name, 60.0)) is not None:
        assert job.lease_id is not None
        time.sleep(work_s)  # 0 still yields the GIL, so the threads interleave
        ok = queue.ack(job.id, job.lease_id, {"by": name})
        sink.append((job.id, name, ok))  # list.append is atomic


def test_concurrent_threads_lease_each_job_exactly_once(queue: Queue) -> None:
    ids = [queue.enqueue({"i": i}) for i in range(200)]
    seen: list[tuple[str, str, bool]] = []
    barrier = threading.Barrier(4)

    def run(name: str) -> None:
        barrier.wait()
        _worker_loop(queue, name, seen)

    threads = [threading.Thread(target=run, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert all(ok for _, _, ok in seen)
    assert sorted(job_id for job_id, _, _ in seen) == sorted(ids)
    assert queue.counts() == {"queued": 0, "leased": 0, "done": 200, "dead": 0}
    for job_id, name, _ in seen:
        job = queue.get(job_id)
        assert (job.attempts, job.result) == (1, {"by": name})


# -- SqliteQueue specifics --------------------------------------------------------------------


def test_sqlite_durable_across_reopen(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    q = SqliteQueue(path, max_attempts=2)
    q.enqueue({"doc": "a"}, job_id="a", priority=1)
    q.enqueue({"doc": "b"}, job_id="b")
    job = q.lease("w", 30.0)
    assert job is not None and job.lease_id is not None
    q.ack("a", job.lease_id, {"n": 1})
    q.close()
    with pytest.raises(Unavailable):
        q.get("a")

    with SqliteQueue(path, max_attempts=2) as reopened:  # migrations must not re-run
        assert reopened.get("a").result == {"n": 1}
        assert reopened.get("b").payload == {"doc": "b"}
        assert reopened.get("b").max_attempts == 2
        assert reopened.counts() == {"queued": 1, "leased": 0, "done": 1, "dead": 0}


def test_sqlite_enqueue_survives_kill_9(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    code = textwrap.dedent(
        """
        import os, signal, sys
        from pathlib import Path
        from embedstack.ingest.queue import SqliteQueue
        q = SqliteQueue(Path(sys.argv[1]))
        q.enqueue({"doc": "kept"}, job_id="kept")
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    with SqliteQueue(path) as q:
        assert q.get("kept").payload == {"doc": "kept"}


def test_sqlite_uses_wal_and_full_sync(tmp_path: Path) -> None:
    with SqliteQueue(tmp_path / "q.db") as q:
        conn = q._conn()
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert conn.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000


def test_sqlite_refuses_newer_schema(tmp_path: Path) -> None:
    path = tmp_path / "q.db"
    with SqliteQueue(path) as q:
        q._conn().execute("INSERT INTO schema_version VALUES (999, 0)")
    with pytest.raises(Unavailable, match="schema version 999"):
        SqliteQueue(path)


_CHILD_WORKERS = textwrap.dedent(
    """
    import sys, threading, time
    from pathlib import Path
    from embedstack.ingest.queue import SqliteQueue
    q = SqliteQueue(Path(sys.argv[1]))
    print("READY", flush=True)
    sys.stdin.readline()
    seen = []
    def work(name):
        while (job := q.lease(name, 60.0)) is not None:
            time.sleep(0.002)
            seen.append((job.id, name, q.ack(job.id, job.lease_id, {"by": name})))
    threads = [threading.Thread(target=work, args=(f"child-{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    q.close()
    for job_id, name, ok in seen:
        print(job_id, name, ok)
    """
)


def test_sqlite_threads_in_two_processes_lease_each_job_exactly_once(fast_dir: Path) -> None:
    path = fast_dir / "q.db"
    q = SqliteQueue(path)
    ids = [q.enqueue({"i": i}) for i in range(200)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD_WORKERS, str(path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert child.stdout is not None and child.stdin is not None
        assert child.stdout.readline().strip() == "READY", "child failed to open the queue"
        seen: list[tuple[str, str, bool]] = []
        threads = [
            threading.Thread(target=_worker_loop, args=(q, f"parent-{i}", seen, 0.002))
            for i in range(4)
        ]
        for t in threads:
            t.start()
        child.stdin.write("GO\n")
        child.stdin.flush()
        for t in threads:
            t.join(timeout=60)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    for line in out.splitlines():
        job_id, name, ok = line.split()
        seen.append((job_id, name, ok == "True"))

    assert all(ok for _, _, ok in seen)
    assert sorted(job_id for job_id, _, _ in seen) == sorted(ids)  # each exactly once
    # ~2 ms of "work" per job keeps both processes busy at once, so both must have taken part.
    assert {name.split("-")[0] for _, name, _ in seen} == {"parent", "child"}
    assert q.counts() == {"queued": 0, "leased": 0, "done": 200, "dead": 0}
    for job_id, name, _ in seen:
        job = q.get(job_id)
        assert (job.attempts, job.result) == (1, {"by": name})
    q.close()


def test_purge_forgets_old_done_jobs_only(queue: Queue, advance: Callable[[float], None]) -> None:
    done, dead, waiting = queue.enqueue({"n": 1}), queue.enqueue({"n": 2}), queue.enqueue({"n": 3})
    job = _lease(queue)
    assert job.id == done and queue.ack(done, job.lease_id or "", {})
    for _ in range(MAX_ATTEMPTS):
        job = _lease(queue)
        assert job.id == dead
        queue.fail(dead, job.lease_id or "", "boom")
    advance(100.0)
    recent = queue.enqueue({"n": 4})
    assert queue.purge(older_than=50.0) == 1
    with pytest.raises(NotFound):
        queue.get(done)
    assert {queue.get(j).status for j in (dead, waiting, recent)} == {"dead", "queued"}
    assert queue.purge(older_than=50.0) == 0


def test_release_gives_the_job_back_at_once_without_counting_the_attempt(queue: Queue) -> None:
    job_id = queue.enqueue({"n": 1})
    job = _lease(queue, vt=3600.0)
    assert job.lease_id is not None
    assert not queue.release(job_id, "not-our-lease")
    assert queue.release(job_id, job.lease_id)
    again = queue.get(job_id)
    assert again.status == "queued" and again.attempts == 0 and again.lease_id is None
    # available now, not after the visibility timeout; the old lease is void
    assert _lease(queue, "w2").id == job_id
    assert not queue.release(job_id, job.lease_id)
