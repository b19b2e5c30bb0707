"""Records another system produces, consumed from real brokers (tansu for Kafka, redis-server
for Redis streams): the position moves only after the documents are durable, bad records are
reported by position, and a second run starts where the first one committed."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic

from embedstack.infra.local import LocalProcess
from embedstack.ingest.records import Rejected
from embedstack.ingest.streams import StreamSource, consume, open_source
from embedstack.types import Document, RecordTemplate
from tests.conftest import Server
from tests.integration.test_ingest_files import HASHING, hits, ingest, stored

TEMPLATE = RecordTemplate("id", ("title", "body"), ("lang",))
RECORDS = [
    {"id": "r1", "title": "Kafka", "body": "A distributed commit log.", "lang": "en"},
    {"id": "r2", "title": "Redis", "body": "An in-memory data store with streams.", "lang": "en"},
    {"title": "No id", "body": "This record lacks its id."},
    {"id": "r4", "title": "Postgres", "body": "A relational database.", "lang": "en"},
]


def messages() -> list[bytes]:
    raw = [orjson.dumps(r) for r in RECORDS]
    return [*raw[:3], b"{not json", raw[3]]


def produce_kafka(broker: LocalProcess, topic: str, values: list[bytes]) -> None:
    producer = Producer({"bootstrap.servers": broker.address})
    for value in values:
        producer.produce(topic, value=value)
    assert producer.flush(10) == 0


def new_topic(broker: LocalProcess) -> str:
    topic = f"docs-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": broker.address})
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])[topic].result(10)
    return topic


def template_args() -> tuple[str, ...]:
    return ("--record-id", "id", "--record-text", "title,body", "--record-metadata", "lang")


def test_kafka_topic_into_a_searchable_collection(
    kafka_broker: LocalProcess, tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    topic = new_topic(kafka_broker)
    produce_kafka(kafka_broker, topic, messages())
    data = tmp_path / "data"
    url = f"kafka://{kafka_broker.address}/{topic}"
    run = ("--from", url, "-c", "kb", "--data-dir", str(data), "--idle-timeout", "20")
    first = ingest(*run, *template_args(), "--max-records", "5")
    assert first.returncode == 1, first.stdout + first.stderr
    assert "consumed 5 records from kafka:" + topic in first.stdout
    errors = [line for line in first.stderr.splitlines() if line.startswith("rejected ")]
    assert [e.split(": ", 1)[0] for e in errors] == [
        f"rejected kafka:{topic}[0]@2", f"rejected kafka:{topic}[0]@3",
    ]  # fmt: skip
    assert "no value for 'id'" in errors[0] and "not valid JSON" in errors[1]
    assert set(stored(data, "kb")) == {"r1", "r2", "r4"}
    # the position was committed: a second run reads only what came after
    produce_kafka(kafka_broker, topic, [orjson.dumps({"id": "r5", "title": "T", "body": "Five"})])
    second = ingest(*run, "--max-records", "1")
    assert second.returncode == 0, second.stderr
    assert "consumed 1 records" in second.stdout and "queued 1 documents" in second.stdout
    assert stored(data, "kb")["r5"] == "T\nFive"
    server = make_server(HASHING, data=data)
    job_id = first.stdout.split("the rejections are listed by job ")[1].split()[0]
    with server.client() as c:  # the rejections are kept with the job, not only printed
        job = c.get(f"/v1/jobs/{job_id}").json()
    assert [r["where"] for r in job["rejected"]] == [f"kafka:{topic}[0]@2", f"kafka:{topic}[0]@3"]
    top = hits(server, "Redis\nAn in-memory data store with streams.")[0]
    assert top["document_id"] == "r2" and top["metadata"] == {
        "lang": "en",
        "source": f"kafka:{topic}",
    }


def test_redis_stream_into_a_collection_resumes_from_its_group(
    redis_broker: LocalProcess, tmp_path: Path
) -> None:
    stream = f"docs-{uuid.uuid4().hex[:8]}"
    r = redis.Redis(host="127.0.0.1", port=redis_broker.port)
    for raw in messages():
        r.xadd(stream, {"json": raw})
    r.xadd(stream, {"id": "f1", "title": "Fields", "body": "A record as stream fields."})
    data = tmp_path / "data"
    run = ("--from", f"redis://{redis_broker.address}/{stream}", "-c", "kb",
           "--data-dir", str(data), "--idle-timeout", "2")  # fmt: skip
    first = ingest(*run, *template_args())
    assert first.returncode == 1 and "consumed 6 records" in first.stdout, first.stderr
    assert set(stored(data, "kb")) == {"r1", "r2", "r4", "f1"}
    assert r.xpending(stream, "embedstack-kb")["pending"] == 0  # all acknowledged
    r.xadd(stream, {"json": orjson.dumps({"id": "r6", "title": "Six", "body": "After."})})
    second = ingest(*run)
    assert second.returncode == 0 and "consumed 1 records" in second.stdout, second.stderr


class Failing(Exception):
    pass


def _fail(_: list[Document]) -> None:
    raise Failing("the store is full")


def _read_all(source: StreamSource, max_records: int) -> list[str]:
    got: list[Document] = []
    done = consume(source, TEMPLATE, got.extend, lambda ids: None, lambda r: None,
                   max_records=max_records, idle_timeout=20)  # fmt: skip
    assert done.records == max_records
    return [d.id for d in got]


@pytest.mark.parametrize("kind", ["kafka", "redis"])
def test_position_not_committed_when_documents_are_not_accepted(
    kind: str, kafka_broker: LocalProcess, redis_broker: LocalProcess
) -> None:
    """A batch whose documents could not be made durable is read again by the next consumer."""
    if kind == "kafka":
        name = new_topic(kafka_broker)
        produce_kafka(kafka_broker, name, [orjson.dumps(r) for r in RECORDS])
        url = f"kafka://{kafka_broker.address}/{name}"
    else:
        name = f"s-{uuid.uuid4().hex[:8]}"
        client = redis.Redis(host="127.0.0.1", port=redis_broker.port)
        for rec in RECORDS:
            client.xadd(name, {"json": orjson.dumps(rec)})
        url = f"redis://{redis_broker.address}/{name}"
    group = f"g-{uuid.uuid4().hex[:6]}"
    source = open_source(url, group)
    reported: list[Rejected] = []
    try:
        with pytest.raises(Failing):
            consume(source, TEMPLATE, _fail, lambda ids: None, reported.append,
                    max_records=4, idle_timeout=20)  # fmt: skip
    finally:
        source.close()
    again = open_source(url, group)
    try:
        assert _read_all(again, 4) == ["r1", "r2", "r4"]
    finally:
        again.close()
