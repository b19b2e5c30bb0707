"""Records another system produces, consumed as documents: Kafka topics and Redis streams.

A `StreamSource` hands out batches of records and commits its position only when told to; the
consumer loop (`consume`) tells it after the batch's documents are durably accepted (stored and
their job enqueued), so a crash in between re-delivers the batch (at-least-once; re-ingesting a
document is idempotent) and nothing is skipped. A record that does not fit the template is
reported with its position and committed past: it is an error of the record, and re-reading
it would never make it fit.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlsplit

from embedstack.errors import InvalidInput, Unavailable
from embedstack.ingest.records import Rejected, decode_record, records_to_documents
from embedstack.types import Document, RecordTemplate

Record = tuple[str, Mapping[str, Any] | Rejected]


@dataclass
class Batch:
    records: list[Record] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)  # document ids gone at the source


class StreamSource(Protocol):
    name: str  # put in each document's metadata as "source"

    def poll(self, limit: int, timeout: float) -> Batch: ...
    def commit(self) -> None: ...
    def close(self) -> None: ...


@dataclass
class Consumed:
    records: int = 0
    documents: int = 0
    deleted: int = 0
    rejected: list[Rejected] = field(default_factory=list)


def consume(
    source: StreamSource,
    template: RecordTemplate,
    accept: Callable[[list[Document]], None],
    delete: Callable[[list[str]], None],
    report: Callable[[Rejected], None],
    max_records: int | None = None,
    idle_timeout: float = 5.0,
    batch: int = 256,
) -> Consumed:
    """Read until `max_records` records or `idle_timeout` seconds without any; `accept` must
    return only once the documents, and the rejections `report` was given since the last
    accept, are durable (it raises to stop before the commit)."""
    out = Consumed()
    idle_since = time.monotonic()
    while max_records is None or out.records < max_records:
        left = idle_timeout - (time.monotonic() - idle_since)
        if left <= 0:
            break
        want = batch if max_records is None else min(batch, max_records - out.records)
        got = source.poll(want, timeout=min(1.0, left))
        if not got.records and not got.deleted:
            continue
        idle_since = time.monotonic()
        docs: list[Document] = []
        before = len(out.rejected)
        for item in records_to_documents(template, iter(got.records)):
            if isinstance(item, Rejected):
                out.rejected.append(item)
                report(item)
            else:
                docs.append(Document(item.id, item.text, {"source": source.name, **item.metadata}))
        if docs or len(out.rejected) > before:  # rejections too are made durable (reported)
            accept(docs)
        if got.deleted:
            delete(got.deleted)
        source.commit()
        out.records += len(got.records)
        out.documents += len(docs)
        out.deleted += len(got.deleted)
    return out


def open_source(url: str, group: str, **extra: Any) -> StreamSource:
    """kafka://HOST:PORT/TOPIC, redis://HOST:PORT/STREAM or postgresql://... (see postgres.py)."""
    parts = urlsplit(url)
    name = parts.path.lstrip("/")
    if parts.scheme in ("postgres", "postgresql"):
        from embedstack.ingest.postgres import PostgresSource

        return PostgresSource(url, **extra)
    if not parts.hostname or not parts.port or not name or "/" in name:
        raise InvalidInput(
            f"--from {url!r} is not a stream address: use kafka://HOST:PORT/TOPIC, "
            "redis://HOST:PORT/STREAM or postgresql://USER@HOST:PORT/DB?table=T"
        )
    if parts.scheme == "kafka":
        return KafkaSource(f"{parts.hostname}:{parts.port}", name, group)
    if parts.scheme == "redis":
        return RedisSource(parts.hostname, parts.port, name, group)
    raise InvalidInput(f"--from {url!r}: unknown scheme; use kafka://, redis:// or postgresql://")


class KafkaSource:
    """Every partition of a topic, from the group's committed offsets (the start where none);
    offsets committed (synchronously) only by commit().

    The partitions are assigned, not subscribed: there is no group join (which took ~24 s on
    tansu) and one consumer per group reads them all, which is what one `embedstack ingest`
    process is. Partitions added while it runs are read by the next run."""

    def __init__(self, bootstrap: str, topic: str, group: str) -> None:
        from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

        self.name = f"kafka:{topic}"
        self._topic = topic
        self._consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": group,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
            }
        )
        try:
            meta = self._consumer.list_topics(topic, timeout=10)
            found = meta.topics.get(topic)
            if found is None or found.error is not None or not found.partitions:
                raise InvalidInput(f"kafka topic {topic!r} does not exist at {bootstrap}")
            parts = [TopicPartition(topic, p) for p in sorted(found.partitions)]
            committed = self._consumer.committed(parts, timeout=10)
        except KafkaException as exc:
            self._consumer.close()
            raise Unavailable(f"kafka at {bootstrap} did not answer ({exc})") from exc
        except InvalidInput:
            self._consumer.close()
            raise
        self._consumer.assign(
            [
                TopicPartition(
                    topic, tp.partition, tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
                )
                for tp in committed
            ]
        )
        self._next: dict[int, int] = {}  # partition -> offset after the last record handed out

    def poll(self, limit: int, timeout: float) -> Batch:
        from confluent_kafka import KafkaError

        out = Batch()
        for msg in self._consumer.consume(num_messages=limit, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF or not err.fatal():
                    continue  # the end of a partition, or an error librdkafka retries itself
                raise Unavailable(f"kafka topic {self._topic!r}: {err.str()}")
            partition, offset = msg.partition(), msg.offset()
            if partition is None or offset is None:
                continue
            where = f"kafka:{self._topic}[{partition}]@{offset}"
            value = msg.value()
            if value is None:
                out.records.append((where, Rejected(where, "message has no value")))
            else:
                out.records.append((where, decode_record(where, bytes(value))))
            self._next[partition] = offset + 1
        return out

    def commit(self) -> None:
        if not self._next:
            return
        from confluent_kafka import TopicPartition

        offsets = [TopicPartition(self._topic, p, o) for p, o in self._next.items()]
        self._consumer.commit(offsets=offsets, asynchronous=False)
        self._next.clear()

    def close(self) -> None:
        self._consumer.close()


class RedisSource:
    """A stream read in a consumer group (created at the stream's start if missing). Entries
    are acknowledged (XACK) only by commit(); entries delivered to this consumer earlier and
    never acknowledged (a crash) are read again first. An entry is a record either as its
    fields or, when it has a `json` field, as that JSON object."""

    def __init__(self, host: str, port: int, stream: str, group: str) -> None:
        import redis

        self.name = f"redis:{stream}"
        self._stream = stream
        self._group = group
        self._consumer = group  # one consumer per group: its pending entries are ours on restart
        self._redis = redis.Redis(host=host, port=port, socket_timeout=30)
        try:
            self._redis.xgroup_create(stream, group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        except redis.ConnectionError as exc:
            raise Unavailable(f"redis at {host}:{port} did not answer ({exc})") from exc
        self._backlog = True
        self._delivered: list[bytes] = []

    def poll(self, limit: int, timeout: float) -> Batch:
        entries: Sequence[tuple[bytes, dict[bytes, bytes] | None]] = []
        if self._backlog:
            entries = self._read("0", limit, None)
            self._backlog = bool(entries)
        if not self._backlog:
            entries = self._read(">", limit, max(1, int(timeout * 1000)))
        out = Batch()
        for entry_id, fields in entries:
            self._delivered.append(entry_id)
            where = f"redis:{self._stream}@{entry_id.decode()}"
            if not fields:
                continue  # deleted from the stream (XDEL) while pending
            if b"json" in fields:
                out.records.append((where, decode_record(where, fields[b"json"])))
            else:
                record = {k.decode(): v.decode("utf-8", "replace") for k, v in fields.items()}
                out.records.append((where, record))
        return out

    def _read(
        self, start: str, limit: int, block: int | None
    ) -> Sequence[tuple[bytes, dict[bytes, bytes] | None]]:
        reply: Any = self._redis.xreadgroup(
            self._group, self._consumer, {self._stream: start}, count=limit, block=block
        )
        if not reply:
            return []
        return list(reply[0][1])

    def commit(self) -> None:
        if self._delivered:
            self._redis.xack(self._stream, self._group, *self._delivered)
            self._delivered = []

    def close(self) -> None:
        self._redis.close()
