"""kill -9 at random points: nothing acknowledged is lost or duplicated.

A seeded schedule runs a mixed load (adds, new versions, deletes, a model upgrade) against a
real server plus an `embedstack worker` process, on a collection whose IVF index trains,
retrains and compacts as it goes and snapshots every 0.2 s; each iteration SIGKILLs the server,
the worker or both at a random moment; once per queue backend (SQLite, Redis Streams and a
Kafka-protocol topic on the session's real brokers). At the end (clean restart, queue drained):
- every acknowledged write holds: each document's stored text is its last acknowledged version
  (or, for a request cut off by the kill, the version before or after it), nothing else exists;
- every document is indexed exactly once in every space: contiguous chunk ordinals, no
  duplicated chunks, every chunk from the current text;
- every index serves exactly the store's chunk ids (`embedstack doctor`, which opens each index
  as a server does: its snapshot plus the change log after it), and the store and queue pass
  SQLite's integrity check;
- the upgrade started mid-run resumed and finished its back-fill, and cuts over.
EMBEDSTACK_CRASH_ITERATIONS and EMBEDSTACK_CRASH_SEED make longer or other runs.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx
import pytest

from embedstack.infra.local import LocalProcess
from embedstack.ingest.brokers.url import open_queue
from embedstack.ingest.queue import Queue
from embedstack.testing import EMBEDSTACK
from tests.conftest import Server, server_env

pytestmark = pytest.mark.slow

ITERATIONS = int(os.environ.get("EMBEDSTACK_CRASH_ITERATIONS", "3"))
SEED = int(os.environ.get("EMBEDSTACK_CRASH_SEED", "8"))  # kills: worker, server, both
DELETED = None  # the state of a deleted document


class Writer(threading.Thread):
    """Random adds, new versions and deletes; records what each acknowledged, and for requests
    cut off by a kill, both the state before and after (either may be what the store holds)."""

    def __init__(self, url: str, rng: random.Random, state: dict[str, set[str | None]],
                 upgrade: dict[str, object]) -> None:  # fmt: skip
        super().__init__(daemon=True)
        self.url, self.rng, self.state, self.upgrade = url, rng, state, upgrade
        self.stop = threading.Event()
        self.acked = 0

    def text(self, doc_id: str) -> str:
        words = " ".join(f"w{self.rng.randrange(3000)}" for _ in range(self.rng.randrange(20, 120)))
        return f"{doc_id} version {self.rng.randrange(10**9)}: {words}"

    def run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self.stop.is_set():
                try:
                    self.step(c)
                except httpx.HTTPError:
                    return  # the server was killed

    def step(self, c: httpx.Client) -> None:
        roll = self.rng.random()
        if roll < 0.05 and not self.upgrade.get("started"):
            r = c.post("/v1/collections/kb/upgrade", json={"model": "hashing-test-b"})
            if r.status_code == 202 or r.status_code == 409:
                self.upgrade["started"] = True
            return
        known = [i for i, s in self.state.items() if s != {DELETED}]
        if roll < 0.25 and known:
            doc_id = self.rng.choice(known)
            try:
                r = c.delete(f"/v1/collections/kb/documents/{doc_id}")
            except httpx.HTTPError:
                self.state[doc_id] = self.state[doc_id] | {DELETED}
                raise
            if r.status_code in (200, 404):
                self.state[doc_id] = {DELETED}
            return
        n = self.rng.randrange(1, 12)
        ids = {self.rng.choice(known) if known and self.rng.random() < 0.3
               else f"d{self.rng.randrange(100_000)}" for _ in range(n)}  # fmt: skip
        docs = [{"id": i, "text": self.text(i)} for i in sorted(ids)]
        try:
            r = c.post("/v1/collections/kb/documents", json={"documents": docs})
        except httpx.HTTPError:
            for d in docs:
                self.state[d["id"]] = self.state.get(d["id"], {DELETED}) | {d["text"]}
            raise
        if r.status_code == 202:
            self.acked += 1
            for d in docs:
                self.state[d["id"]] = {d["text"]}


def _worker(data: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([*EMBEDSTACK, "worker", "--data-dir", str(data)], env=env,
                            stdout=log.open("ab"), stderr=subprocess.STDOUT)  # fmt: skip


def _kill(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.kill()
        proc.wait(timeout=30)


def _quiesce(c: httpx.Client, queue: Queue, timeout: float = 240) -> None:
    """Wait until the queue is drained and every stored document is indexed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        counts = queue.counts()
        busy = counts["queued"] + counts["leased"]
        described = c.get("/v1/collections/kb").json()
        up = c.get("/v1/collections/kb/upgrade")
        upgrading = up.status_code == 200 and up.json()["state"] == "backfilling"
        if not busy and not described["documents_pending"] and not upgrading:
            return
        time.sleep(0.2)
    raise TimeoutError("the queue did not drain")


def _check_store(data: Path, state: dict[str, set[str | None]]) -> dict[str, int]:
    with sqlite3.connect(f"file:{data / 'store.db'}?mode=ro", uri=True) as db:
        stored = dict(db.execute("SELECT id, text FROM documents WHERE collection='kb'").fetchall())
        unindexed = db.execute(
            "SELECT count(*) FROM documents WHERE indexed_hash IS NOT content_hash"
        ).fetchone()[0]
        spaces = [
            r[0]
            for r in db.execute(
                "SELECT space_id FROM spaces WHERE collection='kb' AND state IN ('serving','shadow','previous')"
            )
        ]
        chunks: dict[tuple[str, str], list[tuple[int, str]]] = {}
        for space, doc, ordinal, text in db.execute(
            "SELECT space_id, document_id, ordinal, text FROM chunks WHERE collection='kb'"
        ):
            chunks.setdefault((space, doc), []).append((ordinal, text))
    lost = {i: s for i, s in state.items() if stored.get(i, DELETED) not in s}
    assert not lost, f"{len(lost)} acknowledged writes lost, e.g. {list(lost.items())[:2]}"
    assert set(stored) <= set(state), f"unknown documents: {set(stored) - set(state)}"
    assert unindexed == 0
    for space in spaces:
        for doc, text in stored.items():
            got = sorted(chunks.get((space, doc), []))
            assert [o for o, _ in got] == list(range(len(got))) and got, (space, doc, got)
            assert all(t in text for _, t in got), f"{doc} indexed from an old version in {space}"
    assert not {k for k in chunks if k[1] not in stored}, "chunks of deleted documents remain"
    return {"documents": len(stored), "spaces": len(spaces)}


def _queue_url(backend: str, request: pytest.FixtureRequest) -> str:
    """The --queue URL of `backend`, on the session's broker, with names of its own."""
    if backend == "sqlite":
        return "sqlite"
    name = f"crash-{uuid.uuid4().hex[:10]}"
    if backend == "kafka":
        broker: LocalProcess = request.getfixturevalue("kafka_broker")
        return f"kafka://{broker.address}?topic={name}&group={name}&partitions=2"
    server: LocalProcess = request.getfixturevalue("redis_broker")
    return f"redis://{server.address}?name={name}"


@pytest.mark.parametrize("backend", ["sqlite", "redis", "kafka"])
def test_kill9_at_random_points_loses_and_duplicates_nothing(
    tmp_path: Path, make_server: Callable[..., Server], backend: str, request: pytest.FixtureRequest
) -> None:
    """With each queue backend: the embedded SQLite queue, Redis Streams, a Kafka topic."""
    rng = random.Random(SEED)
    env = server_env(
        EMBEDSTACK_QUEUE=_queue_url(backend, request),
        EMBEDSTACK_DEFAULT_MODEL="hashing-test",
        EMBEDSTACK_VISIBILITY_TIMEOUT_S="2",
        EMBEDSTACK_INGEST_BATCH_DOCUMENTS="8",
        EMBEDSTACK_SNAPSHOT_INTERVAL_S="0.2",
        EMBEDSTACK_COMPACTION_RATIO="0.05",
    )
    server = make_server(env)
    index = {
        "type": "ivf_flat",
        "nlist": 4,
        "train_min": 160,
        "retrain_growth": 1.5,
        "recall_floor": 0,
    }
    with server.client() as c:
        r = c.post(
            "/v1/collections",
            json={"name": "kb", "index": index, "chunking": {"size": 48, "overlap": 4}},
        )
        assert r.status_code == 201, r.text
    state: dict[str, set[str | None]] = {}
    upgrade: dict[str, object] = {}
    kills = []
    worker = None
    for it in range(ITERATIONS):
        if server.proc is None:
            server.start()
        worker = _worker(server.data_dir, env, tmp_path / "worker.log")
        writer = Writer(server.url, random.Random(rng.random()), state, upgrade)
        writer.start()
        target = rng.choice(["server", "worker", "both"])
        at = rng.uniform(0.5, 3.0)
        time.sleep(at)
        if target in ("worker", "both"):
            _kill(worker)
        if target in ("server", "both"):
            server.stop(kill=True)
        time.sleep(0.3)
        writer.stop.set()
        writer.join(timeout=30)
        kills.append((it, target, round(at, 2), writer.acked))
        _kill(worker)
        server.stop(kill=True)

    server.start()  # the in-process worker finishes what is left
    queue = open_queue(env["EMBEDSTACK_QUEUE"], server.data_dir, max_attempts=5)
    with server.client() as c, closing(queue):
        _quiesce(c, queue)
        up = c.get("/v1/collections/kb/upgrade")
        if upgrade.get("started"):
            assert up.status_code == 200 and up.json()["state"] == "ready", up.text
        described = c.get("/v1/collections/kb").json()
        assert described["vectors"] == described["chunks"], described
    server.stop()  # clean: the snapshot now is exactly what was served
    summary = _check_store(server.data_dir, state)
    out = subprocess.run([*EMBEDSTACK, "doctor", "--data-dir", str(server.data_dir), "--json"],
                         env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
    diagnosis = json.loads(out.stdout)
    assert diagnosis["verdict"] == "ok", diagnosis
    assert all(i["missing"] == 0 and i["extra"] == 0 for i in diagnosis["indexes"])
    assert len(diagnosis["indexes"]) == summary["spaces"]
    if upgrade.get("started"):
        server.start()
        with server.client() as c:
            r = c.post("/v1/collections/kb/upgrade/cutover", json={"force": True})
            assert r.status_code == 200, r.text
            some = next(i for i, s in state.items() if s != {DELETED} and len(s) == 1)
            text = str(next(iter(state[some])))
            hits = c.post("/v1/collections/kb/query", json={"text": text, "k": 1}).json()["hits"]
            assert hits[0]["document_id"] == some
        server.stop()
    print(
        f"crash iterations with the {backend} queue (iteration, killed, at s, acked requests): "
        f"{kills}; {summary}"
    )


SNAPSHOT_WRITER = """
import sys
from pathlib import Path
import numpy as np
from embedstack.index.factory import create_index
from embedstack.storage.snapshot import write_snapshot
parent, rng = Path(sys.argv[1]), np.random.default_rng(int(sys.argv[2]))
index, n = create_index("hnsw", 16, "cosine", {"M": 8, "ef_construction": 16}), 0
while True:
    index.add(np.arange(n, n + 500, dtype=np.int64), rng.standard_normal((500, 16)).astype(np.float32))
    n += 500
    write_snapshot(parent, f"snap-{n}", index.save, {"seq": n, "count": index.count()})
"""


def test_kill9_while_writing_snapshots_leaves_a_sound_one(tmp_path: Path) -> None:
    """Whenever a snapshot writer dies, CURRENT names a whole snapshot whose files match their
    checksums and load with the count the manifest says (never a torn one)."""
    from embedstack.index.factory import load_index
    from embedstack.storage.snapshot import read_snapshot

    rng = random.Random(SEED)
    parent = tmp_path / "snaps"
    parent.mkdir()
    seen = []
    for it in range(max(4, ITERATIONS * 2)):
        proc = subprocess.Popen([*EMBEDSTACK[:1], "-c", SNAPSHOT_WRITER, str(parent), str(it)],
                                env=server_env())  # fmt: skip
        current = parent / "CURRENT"
        before = current.read_text() if current.exists() else None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # this writer has written (imports take a while)
            if current.exists() and current.read_text() != before:
                break
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 1.0))  # then die somewhere in the writing loop
        _kill(proc)
        found = read_snapshot(parent)
        assert found is not None, "CURRENT names no sound snapshot"
        data, manifest = found
        assert load_index(data).count() == manifest["count"]
        seen.append(manifest["count"])
    assert len(set(seen)) > 1, seen
