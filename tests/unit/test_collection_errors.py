"""A failed index rebuild is visible on the collection and the old index keeps serving."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from embedstack.inference.backend import ModelRegistry
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexConfig, IndexManager, LiveIndex
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store


def test_a_failed_rebuild_is_reported_and_the_old_index_keeps_serving(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = Store(tmp_path / "store.db")
    indexes = IndexManager(store, tmp_path / "indexes", Metrics())
    collections = CollectionService(store, ModelRegistry(), indexes, "none")
    record = collections.create("v", dim=4, metric="l2")
    vec = np.arange(4, dtype=np.float32).tobytes()
    store.put_documents("v", [DocumentRow("a", "t", {}, "h", vec)])
    store.write_chunks(
        "v", record.space_id, [DocumentChunks("a", "h", [ChunkRow(0, "t", 0, 1, 0, "h", vec)])]
    )
    indexes.sync_collection("v")

    def broken(cfg: IndexConfig) -> LiveIndex:
        raise RuntimeError("training ran out of memory")

    record = collections.change_index("v", {"type": "flat"})
    monkeypatch.setattr(indexes, "replace", broken)
    with pytest.raises(RuntimeError):
        collections.rebuild(record)
    described = collections.describe(record)
    assert "out of memory" in described["last_rebuild_error"]
    assert described["state"] == "ready" and described["vectors"] == 1
    _, ids = indexes.search("v", record.space_id, np.zeros((1, 4), np.float32), 1)
    assert ids[0].tolist() == [1]
    monkeypatch.undo()
    collections.rebuild(record)
    assert collections.describe(record)["last_rebuild_error"] is None
    store.close()
