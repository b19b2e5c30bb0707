"""The broker binaries the `brokers` extra ships start on loopback and speak their protocols."""

from __future__ import annotations

import threading
import time
import uuid
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from embedstack.cluster.coordination import catalog_client
from embedstack.errors import Unavailable
from embedstack.infra.local import LocalProcess, spawn, start_redis_ha


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


def test_replicated_catalog_loses_no_acknowledged_write_when_its_primary_is_killed(
    tmp_path: Path,
) -> None:
    """A writer keeps writing while the primary is killed -9: every write that returned is on
    the new primary (each was confirmed by a replica first), the writer only pauses for the
    failover; with no replica left a write is refused with a message naming the cause."""
    with start_redis_ha(tmp_path / "ha") as ha:
        client = catalog_client(ha.url(2), failover_s=30)
        acked: list[int] = []
        killed = threading.Event()
        errors: list[str] = []

        def write() -> None:
            i = 0
            while len(acked) < 400 and not (killed.is_set() and len(acked) > 200 + 100):
                try:
                    client.hset("acked", str(i), str(i))
                    acked.append(i)
                except Unavailable as exc:  # a write cut off mid-WAIT: not acknowledged
                    errors.append(str(exc))
                i += 1

        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        deadline = time.monotonic() + 30
        while len(acked) < 100 and time.monotonic() < deadline:
            time.sleep(0.01)
        old = ha.primary()
        old.kill()
        at = len(acked)
        killed.set()
        writer.join(timeout=60)
        assert not writer.is_alive()
        new = ha.primary()
        assert new.port != old.port
        assert len(acked) > at + 50  # the writer carried on after the failover
        held = {int(k) for k in client.hkeys("acked")}
        assert set(acked) <= held, sorted(set(acked) - held)[:10]
        assert len(errors) <= 1, errors  # at most the one write in flight at the kill

        fast = catalog_client(ha.url(2), ack_ms=300, failover_s=0)
        for server in ha.servers:
            if server is not new:
                server.kill()
        with pytest.raises(Unavailable, match=r"no catalog replica confirmed|no replica in sync"):
            fast.hset("acked", "alone", "1")
