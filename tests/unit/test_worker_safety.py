"""The ingest worker never fails an acknowledged document for the server's own limits, and
survives a queue that is briefly unusable."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.errors import Overloaded, Unavailable
from embedstack.inference.backend import ModelEntry, ModelRegistry
from embedstack.inference.engines.hashing import HashingEmbedder
from embedstack.ingest.chunking import content_hash
from embedstack.ingest.pipeline import IngestWorker, WorkerConfig
from embedstack.ingest.queue import SqliteQueue
from embedstack.ingest.submit import submit_documents
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexManager
from embedstack.storage.store import DocumentRow, Store


class Node:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "store.db")
        self.queue = SqliteQueue(tmp / "queue.db", max_attempts=2)
        self.models = ModelRegistry()
        self.models.register(
            ModelEntry("hash", "test", partial(HashingEmbedder, name="hash", seed=0))
        )
        self.metrics = Metrics()
        self.indexes = IndexManager(self.store, tmp / "indexes", self.metrics)
        self.collections = CollectionService(self.store, self.models, self.indexes, "hash")
        self.calls: list[int] = []
        self.refusals = 0  # the next embed calls that answer Overloaded
        self.limit = 1_000_000  # texts one embed call admits

    async def embed(self, model: str, texts: Sequence[str]) -> np.ndarray:
        self.calls.append(len(texts))
        if len(texts) > self.limit:
            raise AssertionError(f"{len(texts)} texts sent at once, over {self.limit}")
        if self.refusals:
            self.refusals -= 1
            raise Overloaded("the bulk lane is full", retry_after=0.01)
        return self.models.get(model).embed_batch(list(texts))

    def worker(self, **config: Any) -> IngestWorker:
        async def written(collection: str) -> None:
            self.indexes.sync_collection(collection)

        cfg = WorkerConfig(**config)
        return IngestWorker(
            self.store, self.queue, self.models, self.embed, self.metrics, cfg, written
        )

    def submit(self, docs: dict[str, str]) -> str:
        rows = [DocumentRow(i, t, {}, content_hash(t, {})) for i, t in docs.items()]
        return submit_documents(self.store, self.queue, "docs", rows).job_id

    def run_one(self, worker: IngestWorker) -> None:
        job = self.queue.lease("test", 30.0)
        assert job is not None
        asyncio.run(worker.handle(job))


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    n = Node(tmp_path)
    n.collections.create("docs", chunking={"size": 16, "overlap": 2})
    yield n
    n.queue.close()
    n.store.close()


def test_work_is_split_to_what_the_batcher_admits(node: Node) -> None:
    node.limit = 8
    long = " ".join(f"word{i}" for i in range(600))  # far more than 8 chunks
    job = node.submit({"a": long, "b": long + " more", "c": "short"})
    node.run_one(node.worker(embed_batch=8))
    done = node.queue.get(job)
    assert done.status == "done", done.error
    assert max(node.calls) <= 8 and len(node.calls) > 3
    assert node.store.collection_stats("docs")["documents_pending"] == 0


def test_an_overloaded_lane_is_waited_out_not_failed(node: Node) -> None:
    node.refusals = 6  # more refusals than the job has attempts
    job = node.submit({"a": "hello there", "b": "general kenobi"})
    node.run_one(node.worker())
    done = node.queue.get(job)
    assert done.status == "done", done.error
    assert done.attempts == 1


class FlakyQueue:
    """The real queue, with `lease` failing as a locked database does, `failures` times."""

    def __init__(self, queue: SqliteQueue, failures: int) -> None:
        self._queue = queue
        self.failures = failures

    def lease(self, worker: str, visibility_timeout: float) -> Any:
        if self.failures:
            self.failures -= 1
            if self.failures % 2:
                raise sqlite3.OperationalError("database is locked")
            raise Unavailable("queue database stayed locked for over 10 s")
        return self._queue.lease(worker, visibility_timeout)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._queue, name)


def test_the_worker_loop_survives_a_locked_queue(node: Node) -> None:
    job = node.submit({"a": "hello there"})
    worker = node.worker(error_backoff_min=0.01, error_backoff_max=0.02)
    worker._queue = FlakyQueue(node.queue, failures=5)  # type: ignore[assignment]

    async def scenario() -> None:
        stop = asyncio.Event()
        task = asyncio.ensure_future(worker.run(stop))
        for _ in range(500):
            if node.queue.get(job).status == "done" or task.done():
                break
            await asyncio.sleep(0.01)
        stop.set()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert node.queue.get(job).status == "done"
    assert worker.health() is None


def test_a_lost_lease_stops_the_work_and_is_not_acked(node: Node) -> None:
    job_id = node.submit({"a": "hello there"})
    started: list[bool] = []
    cancelled: list[bool] = []

    async def slow_embed(model: str, texts: Sequence[str]) -> np.ndarray:
        started.append(True)
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return node.models.get(model).embed_batch(list(texts))

    worker = node.worker(visibility_timeout=0.15)
    worker._embed = slow_embed
    job = node.queue.lease("w1", 0.15)
    assert job is not None
    # the lease runs out and another worker takes the job over: our heartbeat is refused
    node.queue.extend = lambda *a: False  # type: ignore[method-assign]
    asyncio.run(asyncio.wait_for(worker.handle(job), 3))  # the 5 s embed did not run out
    # on a loaded machine the lost lease may be seen before the embed starts: then it never runs
    assert cancelled == started
    assert node.queue.get(job_id).status == "leased"
