"""The ingest worker and the upgrade service in process, on the hashing embedder and a real
store, queue and index manager: a failure here points at a function, not at a server log."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import generate_latest

from embedstack.errors import Conflict, SpaceMismatch
from embedstack.inference.backend import ModelEntry, ModelRegistry
from embedstack.inference.engines.hashing import HashingEmbedder
from embedstack.ingest.chunking import content_hash
from embedstack.ingest.pipeline import IngestWorker, WorkerConfig
from embedstack.ingest.queue import SqliteQueue
from embedstack.ingest.submit import submit_documents
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexManager
from embedstack.registry.search import search_space
from embedstack.registry.upgrade import UpgradeService
from embedstack.storage.store import DocumentRow, Store

MODELS = {"hash-a": 0, "hash-b": 1}  # two spaces: hash-b permutes hash-a's coordinates


@dataclass
class Node:
    store: Store
    queue: SqliteQueue
    models: ModelRegistry
    indexes: IndexManager
    collections: CollectionService
    worker: IngestWorker
    upgrades: UpgradeService

    async def embed(self, model: str, texts: Sequence[str]) -> np.ndarray:
        return self.models.get(model).embed_batch(list(texts))

    def submit(self, collection: str, docs: dict[str, str]) -> str:
        rows = [
            DocumentRow(i, t, {"n": len(t)}, content_hash(t, {"n": len(t)}))
            for i, t in docs.items()
        ]
        return submit_documents(self.store, self.queue, collection, rows).job_id

    def drain(self) -> int:
        """Lease and handle jobs until the queue is empty; returns how many ran."""
        for ran in range(100):
            job = self.queue.lease("test", 30.0)
            if job is None:
                return ran
            asyncio.run(self.worker.handle(job))
        raise AssertionError("the queue did not drain in 100 jobs")

    def search(self, collection: str, text: str, k: int = 3) -> list[str]:
        record = self.collections.resolve(collection)
        vec = self.models.get(self.collections.space(record).model or "").embed_batch([text])[0]
        hits = search_space(
            self.store, self.indexes, record.name, record.space_id, vec, k, None, True
        )
        return [h["document_id"] for h in hits]


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[Node]:
    store = Store(tmp_path / "store.db")
    queue = SqliteQueue(tmp_path / "queue.db", max_attempts=2)
    models = ModelRegistry()
    for name, seed in MODELS.items():
        models.register(ModelEntry(name, "test", partial(HashingEmbedder, name=name, seed=seed)))
    metrics = Metrics()
    indexes = IndexManager(store, tmp_path / "indexes", metrics, 0.2)
    collections = CollectionService(store, models, indexes, "hash-a")
    holder: list[Node] = []

    def embed(model: str, texts: Sequence[str]):  # type: ignore[no-untyped-def]
        return holder[0].embed(model, texts)

    async def written(collection: str) -> None:
        indexes.sync_collection(collection)

    worker = IngestWorker(store, queue, models, embed, metrics, WorkerConfig(), on_written=written)
    upgrades = UpgradeService(store, queue, models, indexes, collections, embed, metrics)
    holder.append(Node(store, queue, models, indexes, collections, worker, upgrades))
    yield holder[0]
    queue.close()
    store.close()


DOCS = {
    "py": "Python is a programming language with clear syntax.",
    "cat": "The cat sat on the mat and purred.",
    "sea": "Waves roll across the open sea at night.",
}


def test_the_worker_chunks_embeds_stores_and_indexes(node: Node) -> None:
    node.collections.create("docs", chunking={"size": 16, "overlap": 2})
    job = node.submit("docs", DOCS)
    assert node.drain() == 1
    done = node.queue.get(job)
    assert done.status == "done", done.error
    assert done.result is not None and done.result["documents"] == 3
    assert done.result["chunks_embedded"] >= 3
    assert node.search("docs", "the cat sat on the mat")[0] == "cat"
    assert node.store.collection_stats("docs")["documents_pending"] == 0


def test_unchanged_chunks_are_reused_not_embedded_again(node: Node) -> None:
    node.collections.create("docs")
    node.submit("docs", DOCS)
    node.drain()
    changed = {"py": DOCS["py"], "cat2": DOCS["cat"]}  # one same document, one same text
    job = node.submit("docs", changed)
    node.drain()
    result = node.queue.get(job).result or {}
    assert result["chunks_embedded"] == 0 and result["chunks_reused"] >= 1


def test_a_model_that_changed_space_is_refused_at_ingest(node: Node) -> None:
    node.collections.create("docs")
    # the model name now loads as another space (its weights changed under the same name)
    node.models.register(
        ModelEntry("hash-a", "changed", partial(HashingEmbedder, name="hash-a", seed=7))
    )
    node.models._loaded.pop("hash-a", None)
    job = node.submit("docs", DOCS)
    node.drain()
    failed = node.queue.get(job)
    assert failed.status != "done" and "upgrade the collection" in (failed.error or "")
    with pytest.raises(SpaceMismatch):
        node.collections.embedder_for(
            node.collections.resolve("docs"), node.store.spaces("docs")[0]
        )


def test_an_upgrade_backfills_cuts_over_and_rolls_back(node: Node) -> None:
    node.collections.create("docs")
    node.submit("docs", DOCS)
    node.drain()
    old = node.collections.resolve("docs").space_id
    up = node.upgrades.start("docs", "hash-b")
    assert up.state == "backfilling"
    with pytest.raises(Conflict, match="is ready to cut over: it is backfilling"):
        asyncio.run(node.upgrades.cutover("docs"))
    node.drain()  # the back-fill jobs
    asyncio.run(node.upgrades.refresh())
    assert node.upgrades.status("docs")["state"] == "ready"
    report = asyncio.run(node.upgrades.cutover("docs"))
    assert report["passed"] and report["mode"] == "overlap" and report["overlap"] == 1.0
    record = node.collections.resolve("docs")
    assert record.space_id != old and node.collections.space(record).model == "hash-b"
    assert node.search("docs", "waves on the open sea")[0] == "sea"
    # new writes go to both active spaces, so a rollback serves them too
    node.submit("docs", {"dog": "A dog barks at the postman."})
    node.drain()
    assert node.upgrades.rollback("docs") == old
    assert node.search("docs", "a dog barks")[0] == "dog"
    assert node.upgrades.retire("docs") != old
    assert [s.space_id for s in node.store.spaces("docs")] == [old]


def test_a_retired_space_leaves_no_metric_series(node: Node) -> None:
    node.collections.create("docs")
    node.submit("docs", DOCS)
    node.drain()
    node.upgrades.start("docs", "hash-b")
    node.drain()
    asyncio.run(node.upgrades.refresh())
    asyncio.run(node.upgrades.cutover("docs"))
    old = node.upgrades.retire("docs")
    node.indexes.sync_all()
    exported = generate_latest(node.indexes._metrics.registry).decode()
    assert old not in exported
