"""The shard write log on a Kafka-protocol broker: one topic per collection, one partition per
virtual shard. The API node appends accepted documents (acks=all, idempotent producer) before
answering 202; every replica of a shard reads its partition from its own stored position.

Kafka's per-partition order is what makes replicas converge: they apply the same records in the
same order. Positions are the replica's (kept beside its store, see replica.py); they are also
committed to the broker under one consumer group per replica so standard Kafka tools show lag.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from embedstack.errors import ConfigError, Unavailable
from embedstack.storage.store import DocumentRow


class LogTrimmed(Unavailable):
    """A reader's position is before the first record its partition still holds (retention
    deleted what it had not applied): its replica must start again from a snapshot."""


def kafka_bootstrap(url: str) -> str:
    """host:port[,host:port] from a kafka:// URL."""
    if not url.startswith("kafka://") or not url.removeprefix("kafka://"):
        raise ConfigError(f"queue URL {url!r} is not a Kafka URL: use kafka://HOST:PORT")
    return url.removeprefix("kafka://").rstrip("/")


@dataclass(frozen=True)
class LogRecord:
    """One entry of a shard's log: documents to upsert, one document id to delete, or a change
    of the collection's embedding spaces (`space`: {"action": shadow | cutover | rollback |
    retire, "space_id", "model"}), or new collection settings (`config`: {"index", "search"},
    PATCH of a collection), which every replica applies in log order."""

    op: str  # "put" | "delete" | "space" | "config"
    documents: tuple[DocumentRow, ...] = ()
    document_id: str = ""
    space: dict[str, Any] | None = None
    config: dict[str, Any] | None = None

    def encode(self) -> bytes:
        if self.op == "delete":
            return orjson.dumps({"op": "delete", "id": self.document_id})
        if self.op == "space":
            return orjson.dumps({"op": "space", "space": self.space})
        if self.op == "config":
            return orjson.dumps({"op": "config", "config": self.config})
        docs = [
            {
                "id": d.id,
                "text": d.text,
                "metadata": d.metadata,
                "hash": d.content_hash,
                "vector": base64.b64encode(d.vector).decode() if d.vector is not None else None,
            }
            for d in self.documents
        ]
        return orjson.dumps({"op": "put", "documents": docs})

    @classmethod
    def decode(cls, raw: bytes) -> LogRecord:
        data: dict[str, Any] = orjson.loads(raw)
        if data["op"] == "delete":
            return cls("delete", document_id=str(data["id"]))
        if data["op"] == "space":
            return cls("space", space=dict(data["space"]))
        if data["op"] == "config":
            return cls("config", config=dict(data["config"]))
        docs = tuple(
            DocumentRow(
                d["id"],
                d["text"],
                d["metadata"],
                d["hash"],
                base64.b64decode(d["vector"]) if d["vector"] is not None else None,
            )
            for d in data["documents"]
        )
        return cls("put", docs)


class ShardLog:
    """The producing side: create a collection's topic, append records to shard partitions,
    and delete the records every replica is past (`trim`, when `trims`: Kafka's DeleteRecords;
    off for brokers without it, such as tansu's in-memory engine of `cluster up`)."""

    def __init__(self, bootstrap: str, timeout: float = 10.0, trims: bool = False) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient

        self._bootstrap = bootstrap
        self._timeout = timeout
        self._admin = AdminClient({"bootstrap.servers": bootstrap})
        self._producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "enable.idempotence": True,  # retries never duplicate or reorder a partition
                "linger.ms": 2,
                "message.timeout.ms": int(timeout * 1000),
            }
        )
        self._lock = threading.Lock()
        self.trims = trims

    def create_topic(self, topic: str, partitions: int) -> None:
        from confluent_kafka.admin import NewTopic

        futures = self._admin.create_topics(
            [NewTopic(topic, num_partitions=partitions, replication_factor=1)]
        )
        try:
            futures[topic].result(timeout=self._timeout)
        except Exception as exc:
            raise Unavailable(f"the log broker did not create topic {topic}: {exc}") from exc

    def delete_topic(self, topic: str) -> None:
        futures = self._admin.delete_topics([topic])
        try:
            futures[topic].result(timeout=self._timeout)
        except Exception as exc:
            raise Unavailable(f"the log broker did not delete topic {topic}: {exc}") from exc

    def append(self, topic: str, records: Sequence[tuple[int, str, bytes]]) -> dict[int, int]:
        """Append (partition, key, value) records; returns the last offset written per partition
        once the broker has acknowledged every one (Unavailable otherwise: then nothing may be
        acknowledged to the client, though some records may be in the log and will be applied:
        a retry of the request is idempotent)."""
        done: dict[int, int] = {}
        errors: list[str] = []

        def delivered(err: Any, msg: Any) -> None:
            if err is not None:
                errors.append(str(err))
            else:
                done[msg.partition()] = max(done.get(msg.partition(), -1), msg.offset())

        with self._lock:
            for partition, key, value in records:
                self._producer.produce(
                    topic, value=value, key=key, partition=partition, on_delivery=delivered
                )
            left = self._producer.flush(self._timeout)
        if errors or left:
            raise Unavailable(
                f"the log broker did not acknowledge {len(errors) + left} record(s) "
                f"({'; '.join(errors[:3]) or 'timed out'}): retry the request"
            )
        return done

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        """The next offset of each partition (what a caught-up replica's position equals)."""
        return {p: high for p, (_, high) in self._watermarks(topic, partitions).items()}

    def low_water(self, topic: str, partitions: int) -> dict[int, int]:
        """The first offset each partition still holds."""
        return {p: low for p, (low, _) in self._watermarks(topic, partitions).items()}

    def _watermarks(self, topic: str, partitions: int) -> dict[int, tuple[int, int]]:
        from confluent_kafka import Consumer, TopicPartition

        consumer = Consumer({"bootstrap.servers": self._bootstrap, "group.id": "embedstack-probe"})
        try:
            out = {}
            for p in range(partitions):
                low, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, p), timeout=self._timeout
                )
                out[p] = (int(low), int(high))
            return out
        finally:
            consumer.close()

    def trim(self, topic: str, before: dict[int, int]) -> None:
        """Delete the records before offset `before[p]` of each partition p (DeleteRecords)."""
        from confluent_kafka import TopicPartition

        parts = [TopicPartition(topic, p, offset) for p, offset in before.items()]
        try:
            for future in self._admin.delete_records(parts).values():
                future.result(timeout=self._timeout)
        except Exception as exc:
            raise Unavailable(f"the log broker did not delete records of {topic}: {exc}") from exc

    def close(self) -> None:
        self._producer.flush(self._timeout)


class PartitionReader:
    """One replica's reader of one partition, starting at its stored position."""

    def __init__(self, bootstrap: str, topic: str, partition: int, start: int, group: str) -> None:
        from confluent_kafka import Consumer, TopicPartition

        self.topic = topic
        self.partition = partition
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        self._consumer.assign([TopicPartition(topic, partition, start)])
        self._next = start

    def read(self, max_records: int, timeout: float) -> list[tuple[int, bytes]]:
        """Up to `max_records` (offset, value) pairs in log order; [] after `timeout` seconds;
        LogTrimmed when the first record is past the reader's position (deleted records: an
        out-of-range position resets to the earliest one left)."""
        out = []
        for msg in self._consumer.consume(max_records, timeout):
            offset, value = msg.offset(), msg.value()
            if msg.error() is not None or offset is None or value is None:
                continue  # partition EOF and transient errors: librdkafka retries itself
            out.append((int(offset), bytes(value)))
        if out and out[0][0] > self._next:
            raise LogTrimmed(
                f"{self.topic}[{self.partition}] resumed at offset {out[0][0]}, this replica is "
                f"at {self._next}: the records between were deleted; it needs a snapshot"
            )
        if out:
            self._next = out[-1][0] + 1
        return out

    def commit(self, position: int) -> None:
        """Record `position` (the next offset to apply) with the broker, for lag monitoring."""
        from confluent_kafka import TopicPartition

        self._consumer.commit(
            offsets=[TopicPartition(self.topic, self.partition, position)], asynchronous=True
        )

    def close(self) -> None:
        self._consumer.close()
