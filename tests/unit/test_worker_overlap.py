"""The ingest worker writes one group of documents to the store while it chunks and embeds the
next (a commit waits on fsync; the model would idle meanwhile): writes stay in order, a text
repeated in the next group reuses the vector still being written, a failed write fails the job."""

# ruff: noqa: F811 (the `node` fixture, imported, is every test's argument)
from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pytest

from embedstack.ingest.pipeline import IngestWorker, WorkerConfig
from embedstack.obs.metrics import Metrics
from tests.unit.test_pipeline_inprocess import Node, node  # noqa: F401 (the fixture)

WAIT_S = 10.0  # bounded waits: a worker that does not overlap fails the test, never hangs


def one_document_groups(
    node: Node, on_embed: Callable[[int], None] = lambda n: None
) -> tuple[IngestWorker, list[Sequence[str]]]:
    """A worker over `node` embedding one document at a time; the texts of each embed call
    (`on_embed` is told how many calls there were, each time)."""
    calls: list[Sequence[str]] = []

    async def embed(model: str, texts: Sequence[str]) -> np.ndarray:
        calls.append(list(texts))
        on_embed(len(calls))
        return await node.embed(model, texts)

    async def written(collection: str) -> None:
        node.indexes.sync_collection(collection)

    config = WorkerConfig(batch_documents=1)
    return IngestWorker(node.store, node.queue, node.models, embed, Metrics(), config,
                        on_written=written), calls  # fmt: skip


def run(node: Node, worker: IngestWorker, job: str) -> dict[str, Any]:
    leased = node.queue.lease("test", 30.0)
    assert leased is not None and leased.id == job
    asyncio.run(worker.handle(leased))
    done = node.queue.get(job)
    return {"status": done.status, "error": done.error, **(done.result or {})}


def test_the_next_group_is_embedded_while_a_write_commits(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.collections.create("docs")
    second_embed = threading.Event()
    worker, _ = one_document_groups(node, lambda n: second_embed.set() if n == 2 else None)
    write = node.store.write_chunks
    order: list[str] = []

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        if not order:  # the first write commits only once the next group reached the model
            order.append(f"overlapped={second_embed.wait(WAIT_S)}")
        order.append("write")
        return write(*args, **kwargs)

    monkeypatch.setattr(node.store, "write_chunks", slow_write)
    job = node.submit("docs", {"a": "alpha one", "b": "beta two", "c": "gamma three"})
    result = run(node, worker, job)
    assert result["status"] == "done", result["error"]
    assert order == ["overlapped=True", "write", "write", "write"]
    assert result["chunks_embedded"] == 3 and result["documents"] == 3
    assert node.store.collection_stats("docs")["documents_pending"] == 0
    assert node.search("docs", "beta two")[0] == "b"


def test_a_text_repeated_in_the_next_group_reuses_the_vector_being_written(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    node.collections.create("docs")
    worker, calls = one_document_groups(node)
    write, lookup = node.store.write_chunks, node.store.vectors_by_hash
    looked_up = threading.Event()
    lookups: list[int] = []

    def counted_lookup(*args: Any, **kwargs: Any) -> Any:
        found = lookup(*args, **kwargs)
        lookups.append(len(found))
        if len(lookups) == 2:
            looked_up.set()
        return found

    def slow_write(*args: Any, **kwargs: Any) -> Any:
        looked_up.wait(WAIT_S)  # the first write commits after the second group's lookup
        return write(*args, **kwargs)

    monkeypatch.setattr(node.store, "vectors_by_hash", counted_lookup)
    monkeypatch.setattr(node.store, "write_chunks", slow_write)
    same = "the same words in two documents"
    job = node.submit("docs", {"a": same, "b": same, "c": "something else"})
    result = run(node, worker, job)
    assert result["status"] == "done", result["error"]
    assert lookups[1] == 0  # not in the store yet when the second group looked
    assert calls == [[same], ["something else"]]  # yet embedded once
    assert (result["chunks_embedded"], result["chunks_reused"]) == (2, 1)
    assert node.store.collection_stats("docs")["documents_pending"] == 0


def test_a_failed_write_fails_the_job(node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    node.collections.create("docs")
    worker, _ = one_document_groups(node)
    write = node.store.write_chunks
    writes: list[int] = []

    def failing_write(*args: Any, **kwargs: Any) -> Any:
        writes.append(1)
        if len(writes) == 1:
            raise RuntimeError("disk on fire")
        return write(*args, **kwargs)

    monkeypatch.setattr(node.store, "write_chunks", failing_write)
    job = node.submit("docs", {"a": "alpha one", "b": "beta two", "c": "gamma three"})
    result = run(node, worker, job)
    assert result["status"] != "done" and "disk on fire" in (result["error"] or "")
    assert len(writes) == 1  # no write after the failed one
