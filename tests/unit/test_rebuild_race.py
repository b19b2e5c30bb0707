"""A collection deleted (and re-created under the same name) while its index was being rebuilt
never gets the rebuilt index of its earlier incarnation."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from embedstack.errors import EmbedStackError
from embedstack.inference.backend import ModelRegistry
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexConfig, IndexManager, LiveIndex
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store


def _add(store: Store, space: str, ids: list[str]) -> None:
    vec = np.ones(4, dtype=np.float32).tobytes()
    store.put_documents("c", [DocumentRow(i, "t", {}, "h", vec) for i in ids])
    chunks = [DocumentChunks(i, "h", [ChunkRow(0, "t", 0, 1, 0, "h", vec)]) for i in ids]
    store.write_chunks("c", space, chunks)


def test_a_rebuild_never_lands_on_a_recreated_collection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store.db")
    indexes = IndexManager(store, tmp_path / "indexes", Metrics())
    collections = CollectionService(store, ModelRegistry(), indexes, "none")
    old = collections.create("c", dim=4, metric="l2")
    _add(store, old.space_id, ["a", "b", "c"])
    indexes.sync_collection("c")
    built, release = threading.Event(), threading.Event()
    real = indexes._rebuild

    def slow(cfg: IndexConfig) -> LiveIndex:
        live = real(cfg)  # read the old incarnation's vectors...
        built.set()
        release.wait(10)  # ...and finish after it was deleted and re-created
        return live

    monkeypatch.setattr(indexes, "_rebuild", slow)
    record = collections.change_index("c", {"type": "flat"})
    errors: list[BaseException] = []

    def rebuild() -> None:
        try:
            collections.rebuild(record)
        except EmbedStackError as exc:
            errors.append(exc)

    worker = threading.Thread(target=rebuild)
    worker.start()
    assert built.wait(10)
    monkeypatch.setattr(indexes, "_rebuild", real)
    collections.delete("c")
    new = collections.create("c", dim=4, metric="l2")
    _add(store, new.space_id, ["z"])
    indexes.sync_collection("c")
    release.set()
    worker.join(10)
    indexes.sync_collection("c")
    live = indexes.get("c", new.space_id)
    assert live.index.count() == 1
    assert live.config.type == "hnsw"  # the new collection's own settings
    assert collections.describe(collections.get("c"))["last_rebuild_error"] is None
    store.close()
