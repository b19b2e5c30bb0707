"""Where the broker backends differ from the SQLite queue, on the session's real brokers.

Kafka: offsets are committed per partition only up to the lowest unfinished job; a crash (of a
process, or of its state table) redelivers every unfinished job from the log; a redelivered job
that is already finished is skipped by id; a message some other producer appended is leased.
Redis Streams: the consumer group's pending-entries list holds exactly the unfinished jobs,
claimed by the worker that leases them; entries appended by another producer are leased, and a
duplicate entry of a finished job is skipped by id; a kill -9 of redis-server loses nothing
(appendfsync always). And `serve --queue` on each broker with the real bundled model.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from confluent_kafka import Producer

from embedstack.infra.local import LocalProcess, start_redis
from embedstack.ingest.brokers.kafka import KafkaQueue
from embedstack.ingest.brokers.redis_streams import GROUP, RedisStreamsQueue
from embedstack.ingest.queue import Job, Queue, SqliteQueue
from tests.conftest import Server, server_env, wait_job


def _name() -> str:
    return f"t-{uuid.uuid4().hex[:12]}"


def _lease(queue: Queue, worker: str = "w") -> Job:
    job = queue.lease(worker, 30.0)
    assert job is not None and job.lease_id is not None
    return job


def _kafka(broker: LocalProcess, state: Path, topic: str, group: str) -> KafkaQueue:
    return KafkaQueue(
        broker.address, SqliteQueue(state, max_attempts=3), topic=topic, group=group,
        partitions=1, commit_interval=0.0,
    )  # fmt: skip


def _drain(queue: Queue, polls: int = 40) -> list[str]:
    """Lease and ack everything; the consumer may need a few polls to fetch (bounded: stops
    after `polls` empty polls 50 ms apart)."""
    got: list[str] = []
    empty = 0
    while empty < polls:
        job = queue.lease("w", 30.0)
        if job is None:
            empty += 1
            time.sleep(0.05)
            continue
        assert job.lease_id is not None
        queue.ack(job.id, job.lease_id, {"by": "drain"})
        got.append(job.id)
    return got


def _committed(q: KafkaQueue, want: dict[int, int], timeout: float = 15.0) -> dict[int, int]:
    """The committed offsets once they equal `want`, reading the log meanwhile (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        got = q.committed()
        if got == want or time.monotonic() > deadline:
            return got
        time.sleep(0.05)


@pytest.fixture
def topic() -> str:
    return _name()


def test_kafka_commits_only_up_to_the_lowest_unfinished_job(
    kafka_broker: LocalProcess, tmp_path: Path, topic: str
) -> None:
    with _kafka(kafka_broker, tmp_path / "s.db", topic, topic) as q:
        for i in range(3):
            q.enqueue({"i": i}, job_id=f"j{i}")
        leases = {j.id: j for j in (_lease(q) for _ in range(3))}
        for job_id in ("j1", "j2"):
            lease_id = leases[job_id].lease_id
            assert lease_id is not None and q.ack(job_id, lease_id, {})
        # j0 (offset 0) is unfinished: nothing may be committed, so a crash redelivers all
        # (-1001: no offset committed)
        assert _committed(q, {0: 3}, timeout=2.0) == {0: -1001}
        lease_id = leases["j0"].lease_id
        assert lease_id is not None and q.ack("j0", lease_id, {})
        assert _committed(q, {0: 3}) == {0: 3}


def test_kafka_crash_redelivers_unfinished_jobs_from_the_log(
    kafka_broker: LocalProcess, tmp_path: Path, topic: str
) -> None:
    first = _kafka(kafka_broker, tmp_path / "lost.db", topic, topic)
    for i in range(4):
        first.enqueue({"i": i}, job_id=f"j{i}")
    job = _lease(first)
    assert job.id == "j0" and job.lease_id is not None
    first.ack("j0", job.lease_id, {})
    assert _committed(first, {0: 1}) == {0: 1}
    _lease(first)  # j1 leased, then the process "dies" with its state table: no close()
    try:
        # a new process on another state table: the log redelivers every unfinished job
        with _kafka(kafka_broker, tmp_path / "fresh.db", topic, topic) as second:
            assert sorted(_drain(second)) == ["j1", "j2", "j3"]
            assert _committed(second, {0: 4}) == {0: 4}
    finally:  # only now: its client would outlive the broker and log refused connections
        first.close()


def test_kafka_redelivered_finished_job_is_skipped_by_id(
    kafka_broker: LocalProcess, tmp_path: Path, topic: str
) -> None:
    state = tmp_path / "shared.db"
    with _kafka(kafka_broker, state, topic, topic) as q:
        q.enqueue({"n": 1}, job_id="done-one")
        job = _lease(q)
        assert job.lease_id is not None and q.ack(job.id, job.lease_id, {"chunks": 2})
    # another group reads the topic from the start: the message comes again, the job is done
    with _kafka(kafka_broker, state, topic, _name()) as again:
        again.enqueue({"n": 2}, job_id="new-one")
        assert _drain(again) == ["new-one"]
        assert again.get("done-one").result == {"chunks": 2}
        assert again.get("done-one").attempts == 1


def test_kafka_message_from_another_producer_is_leased(
    kafka_broker: LocalProcess, tmp_path: Path, topic: str
) -> None:
    with _kafka(kafka_broker, tmp_path / "s.db", topic, topic) as q:
        producer = Producer({"bootstrap.servers": kafka_broker.address})
        body = {"id": "foreign", "payload": {"doc": "x"}, "priority": 0}
        producer.produce(topic, key=b"foreign", value=json.dumps(body).encode(), partition=0)
        assert producer.flush(10) == 0
        del producer  # its client threads end with it (not at the end of the session)
        assert _drain(q) == ["foreign"]
        assert q.get("foreign").payload == {"doc": "x"}


@pytest.fixture
def rq(redis_broker: LocalProcess) -> Iterator[RedisStreamsQueue]:
    with RedisStreamsQueue.connect(f"redis://{redis_broker.address}", _name(), 3) as q:
        yield q


def _pending(r: redis.Redis, q: RedisStreamsQueue) -> dict[str, str]:
    """Pending entries of the group: log entry id -> consumer."""
    rows = r.xpending_range("{" + q.name + "}:log", GROUP, "-", "+", 100)
    return {row["message_id"]: row["consumer"] for row in rows}


def test_redis_pending_entries_hold_exactly_the_unfinished_jobs(
    rq: RedisStreamsQueue, redis_broker: LocalProcess
) -> None:
    r = redis.Redis(host="127.0.0.1", port=redis_broker.port, decode_responses=True)
    rq.enqueue({}, job_id="a")
    rq.enqueue({}, job_id="b")
    job = _lease(rq, "worker-1")
    assert list(_pending(r, rq).values()) == ["worker-1", "worker-1"]  # both read, a leased
    other = _lease(rq, "worker-2")
    assert sorted(_pending(r, rq).values()) == ["worker-1", "worker-2"]  # b claimed by its holder
    assert job.lease_id is not None and rq.ack(job.id, job.lease_id, {})
    assert list(_pending(r, rq).values()) == ["worker-2"]
    assert other.lease_id is not None and rq.fail(other.id, other.lease_id, "x") == "queued"
    assert len(_pending(r, rq)) == 1  # a retry is still unfinished
    again = _lease(rq, "worker-3")
    assert again.lease_id is not None and rq.ack(again.id, again.lease_id, {})
    assert _pending(r, rq) == {}


def test_redis_entry_from_another_producer_is_leased_and_a_duplicate_skipped(
    rq: RedisStreamsQueue, redis_broker: LocalProcess
) -> None:
    r = redis.Redis(host="127.0.0.1", port=redis_broker.port, decode_responses=True)
    log = "{" + rq.name + "}:log"
    r.xadd(log, {"id": "foreign", "payload": json.dumps({"doc": "x"}), "priority": "0"})
    job = _lease(rq)
    assert (job.id, job.payload) == ("foreign", {"doc": "x"})
    assert job.lease_id is not None and rq.ack(job.id, job.lease_id, {"ok": 1})
    r.xadd(log, {"id": "foreign", "payload": json.dumps({"doc": "x"}), "priority": "0"})
    assert rq.lease("w", 30.0) is None  # the finished job is not run twice
    assert rq.get("foreign").result == {"ok": 1} and _pending(r, rq) == {}
    assert rq.counts() == {"queued": 0, "leased": 0, "done": 1, "dead": 0}


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "kafka"])
def test_serve_with_queue_flag_ingests_and_answers_on_the_real_model(
    backend: str, request: pytest.FixtureRequest, make_server: Callable[..., Server]
) -> None:
    """`embedstack serve --queue URL` with the bundled all-MiniLM-L6-v2: the job goes through
    the broker, GET /v1/jobs/{id} follows it to done, and a query finds each document."""
    broker: LocalProcess = request.getfixturevalue(f"{backend}_broker")
    name = _name()
    url = (
        f"kafka://{broker.address}?topic={name}&group={name}&partitions=2"
        if backend == "kafka"
        else f"redis://{broker.address}?name={name}"
    )
    env = server_env(EMBEDSTACK_MODEL_BACKENDS='{"all-MiniLM-L6-v2": "onnx-fp32"}')
    server = make_server(env, ["--queue", url])
    docs = [
        {"id": "tea", "text": "Green tea is brewed from the leaves of Camellia sinensis."},
        {"id": "rust", "text": "The borrow checker enforces ownership rules in Rust programs."},
        {"id": "alps", "text": "The Matterhorn is a mountain of the Alps on the Swiss border."},
    ]
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        r = c.post("/v1/collections/kb/documents", json={"documents": docs})
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"], timeout=300)["status"] == "done"
        for question, want in [
            ("how is tea made", "tea"),
            ("memory safety in a systems language", "rust"),
            ("a peak in Switzerland", "alps"),
        ]:
            hits = c.post("/v1/collections/kb/query", json={"text": question, "k": 1}).json()
            assert hits["hits"][0]["document_id"] == want, (question, hits)


def test_redis_queue_survives_a_kill_9_of_redis_server(tmp_path: Path) -> None:
    """appendfsync always: every acknowledged enqueue, lease and ack is on disk, so a killed
    redis-server restarted on its folder has the same jobs in the same states."""
    server = start_redis(tmp_path / "redis")
    port, name = server.port, _name()
    try:
        with RedisStreamsQueue.connect(f"redis://{server.address}", name, 3) as q:
            for i in range(3):
                q.enqueue({"i": i}, job_id=f"j{i}")
            done = _lease(q)
            assert done.lease_id is not None and q.ack(done.id, done.lease_id, {"ok": 1})
            held = _lease(q)
        server.kill()
        server.stop()
        server = start_redis(tmp_path / "redis", port=port)
        with RedisStreamsQueue.connect(f"redis://{server.address}", name, 3) as q:
            assert q.counts() == {"queued": 1, "leased": 1, "done": 1, "dead": 0}
            assert q.get("j0").result == {"ok": 1}
            assert q.get(held.id).lease_id == held.lease_id
            assert _lease(q).id == "j2"
    finally:
        server.stop()
