"""Log retention on a real Redis Streams shard log (the server the `brokers` extra ships): once
every replica of a shard is past an offset, the router's retention points let the records
before it be deleted; a replica killed and restarted from its own snapshot catches up; a new
replica cannot replay a trimmed log from 0 (LogTrimmed, never a silent gap) and converges from
a snapshot of a live one. Replicas run the shard node's own feed threads (cluster/ray/node.py
_Feed), in process: no Ray needed for this."""

from __future__ import annotations

import functools
import random
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
import pytest

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.log import LogRecord
from embedstack.cluster.logs import open_reader, shard_log
from embedstack.cluster.ray.node import ShardNode, _Feed
from embedstack.cluster.replica import ShardReplica
from embedstack.cluster.router import ReplicaState, View, retention_points
from embedstack.cluster.stream_log import StreamShardLog
from embedstack.config import Settings
from embedstack.infra.local import LocalProcess
from embedstack.ingest.chunking import content_hash
from embedstack.registry.collections import CollectionConfigs
from embedstack.serving.services import build_models
from embedstack.storage.store import DocumentRow

pytestmark = pytest.mark.usefixtures("single_omp_thread")


def _record(start: int, n: int) -> bytes:
    rng = random.Random(start)
    rows = []
    for i in range(start, start + n):
        text = " ".join(f"w{rng.randrange(500)}" for _ in range(12))
        rows.append(DocumentRow(f"d{i}", text, {}, content_hash(text, {})))
    return LogRecord("put", tuple(rows)).encode()


def _wait(feeds: list[_Feed], position: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while any(f.replica.position < position for f in feeds):
        errors = [f.error for f in feeds if f.error]
        assert time.monotonic() < deadline, (position, [f.replica.position for f in feeds], errors)
        time.sleep(0.05)


def test_trimmed_log_still_converges_restarted_and_new_replicas(
    redis_broker: LocalProcess, tmp_path: Path
) -> None:
    url = f"redis://{redis_broker.address}/4"
    log = shard_log(url)
    assert isinstance(log, StreamShardLog) and log.trims
    settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=tmp_path)
    models = build_models(settings, {})
    config, space = CollectionConfigs(models, "hashing-test").config_for("docs")
    topic = f"embedstack.docs.{uuid.uuid4().hex[:8]}"
    coll = ClusterCollection("docs", config, space, time.time(), topic, 1, 2)
    log.create_topic(topic, 1)

    def feed(node: str) -> _Feed:
        replica = ShardReplica(tmp_path / node, coll, 0, models)

        def reader() -> Any:
            return open_reader(url, topic, 0, replica.position, f"{topic}.{node}")

        return _Feed(replica, reader)

    def view(*feeds: tuple[str, _Feed]) -> View:
        states = [ReplicaState(n, 0, topic, f.replica.position, f.error) for n, f in feeds]
        return View([n for n, _ in feeds], {(topic, 0): states}, time.monotonic())

    def stop(f: _Feed) -> None:  # the feed thread ends; its store is left as a crash leaves it
        f.stop.set()
        f.thread.join(timeout=30)
        f.reader.close()

    log.append(topic, [(0, "k", _record(i * 10, 10)) for i in range(3)])
    a, b = feed("a"), feed("b")
    _wait([a, b], 3)
    placement = {0: ("a", "b")}
    assert retention_points(topic, placement, view(("a", a), ("b", b))) == {0: 3}
    log.trim(topic, {0: 3})
    assert log.low_water(topic, 1) == {0: 3} and log.end_offsets(topic, 1) == {0: 3}

    # b is killed; while it is placed but silent nothing is trimmed past it
    stop(b)
    log.append(topic, [(0, "k", _record(30 + i * 10, 10)) for i in range(2)])
    _wait([a], 5)
    assert retention_points(topic, placement, view(("a", a))) == {}
    b = feed("b")  # restarted: its own store and position (3), then the log from there
    assert b.replica.position == 3
    _wait([a, b], 5)
    assert a.replica.documents() == b.replica.documents() == 50
    log.trim(topic, retention_points(topic, placement, view(("a", a), ("b", b))))
    assert log.low_water(topic, 1) == {0: 5}

    # a new replica cannot replay from 0: the records are gone, and it says so
    c = feed("c")
    log.append(topic, [(0, "k", _record(50, 10))])
    deadline = time.monotonic() + 30
    while "LogTrimmed" not in (c.error or "") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "LogTrimmed" in (c.error or "") and c.replica.position == 0
    stop(c)
    c.replica.close()
    # started from a snapshot of a live replica (what shard transfer sends), it converges
    shutil.rmtree(tmp_path / "c")
    (tmp_path / "c").mkdir()
    position = a.replica.snapshot(tmp_path / "c" / "store.db")
    (tmp_path / "c" / "position.json").write_bytes(orjson.dumps({"position": position}))
    c = feed("c")
    _wait([a, b, c], 6)
    assert a.replica.documents() == b.replica.documents() == c.replica.documents() == 60
    for f in (a, b, c):
        stop(f)
        f.replica.close()
    log.delete_topic(topic)
    log.close()


def test_a_node_behind_the_trimmed_log_is_resynced_from_a_peer_snapshot(
    redis_broker: LocalProcess, tmp_path: Path
) -> None:
    """The shard node's own paths, in process (peers call each other's methods directly, where
    the cluster goes through Ray): a replica new to node b arrives as a snapshot of a's in
    pieces; b dies; while it is not placed the log is trimmed past it; b restarts from its disk,
    its reader says LogTrimmed; resync brings it back from a's snapshot and it converges."""
    url = f"redis://{redis_broker.address}/5"
    log = shard_log(url)
    settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=tmp_path)
    factory = functools.partial(build_models, settings, {})
    config, space = CollectionConfigs(factory(), "hashing-test").config_for("docs")
    topic = f"embedstack.docs.{uuid.uuid4().hex[:8]}"
    coll = ClusterCollection("docs", config, space, time.time(), topic, 1, 2)
    log.create_topic(topic, 1)
    nodes: dict[str, ShardNode] = {}

    def peer(name: str) -> Any:
        return lambda method, *args: getattr(nodes[name], method)(*args)

    def start(name: str) -> ShardNode:
        nodes[name] = ShardNode(name, str(tmp_path / "nodes"), url, factory, None, 4096, peer)
        return nodes[name]

    def state(node: ShardNode) -> dict[str, Any]:
        return dict(node.status()["replicas"][0])

    def wait(node: ShardNode, check: Any, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while not check(st := state(node)):
            assert time.monotonic() < deadline, st
            time.sleep(0.05)
        return st

    a = start("a")
    a.assign(coll.to_json(), 0, [])
    log.append(topic, [(0, "k", _record(i * 10, 10)) for i in range(3)])
    wait(a, lambda st: st["position"] == 3)
    b = start("b")
    assert b.assign(coll.to_json(), 0, ["a"])
    moved = state(b)["transfer"]
    assert moved["source"] == "a" and moved["position"] == 3 and moved["pieces"] > 1, moved
    wait(b, lambda st: st["position"] == 3 and st["documents"] == 30)

    for feed in b._feeds.values():  # b dies: its feed threads end, its disk stays
        feed.stop.set()
        feed.thread.join(timeout=30)
        feed.reader.close()
    log.append(topic, [(0, "k", _record(30 + i * 10, 10)) for i in range(2)])
    st = wait(a, lambda st: st["position"] == 5)
    view = View(["a"], {(topic, 0): [ReplicaState("a", 0, topic, 5, st["error"])]}, 0.0)
    log.trim(topic, retention_points(topic, {0: ("a",)}, view))  # b is not placed while down
    assert log.low_water(topic, 1) == {0: 5}

    b = start("b")  # restarted from its disk: position 3, but the log starts at 5
    wait(b, lambda st: "LogTrimmed" in (st["error"] or ""))
    assert b.resync(coll.to_json(), 0, ["a"])
    st = wait(b, lambda st: st["position"] == 5 and st["documents"] == 50)
    assert st["transfer"]["source"] == "a" and st["transfer"]["position"] == 5
    for node in (a, b):
        node.drop("docs", 0)
    log.delete_topic(topic)
    log.close()
