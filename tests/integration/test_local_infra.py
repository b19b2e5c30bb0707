"""The broker binaries the `brokers` extra ships start on loopback and speak their protocols."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from embedstack.errors import Unavailable
from embedstack.infra.local import LocalProcess, spawn


def test_kafka_broker_round_trips_a_message(kafka_broker: LocalProcess) -> None:
    topic = f"t-{uuid.uuid4().hex[:8]}"
    admin = AdminClient({"bootstrap.servers": kafka_broker.address})
    admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1)])[topic].result(10)
    producer = Producer({"bootstrap.servers": kafka_broker.address})
    producer.produce(topic, key=b"k", value=b"hello", partition=1)
    assert producer.flush(10) == 0
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.address,
            "group.id": "g",
            "auto.offset.reset": "earliest",
        }
    )
    consumer.subscribe([topic])
    try:
        got = None
        for _ in range(60):  # bounded: up to ~30 s for the group to join and fetch
            msg = consumer.poll(0.5)
            if msg is not None and msg.error() is None:
                got = msg
                break
        assert got is not None and got.value() == b"hello" and got.partition() == 1
    finally:
        consumer.close()


def test_redis_server_speaks_streams(redis_broker: LocalProcess) -> None:
    r = redis.Redis(host="127.0.0.1", port=redis_broker.port)
    stream = f"s-{uuid.uuid4().hex[:8]}"
    r.xadd(stream, {"a": "1"})
    assert r.xlen(stream) == 1


def test_a_process_that_never_listens_is_reported_with_its_output(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="did not listen"):
        spawn("false", ["sh", "-c", "echo boom; exit 3"], 1, tmp_path, timeout=5)
