"""Queries read bounded work: hydrate in slices under SQLite's variable limit, each document's
metadata parsed once per query, and grouping never fetches more than MAX_FETCH candidates."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.inference.backend import ModelRegistry
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexManager
from embedstack.registry.search import search_space
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store


def _node(tmp_path: Path, chunks: int) -> tuple[Store, IndexManager, str]:
    store = Store(tmp_path / "store.db")
    indexes = IndexManager(store, tmp_path / "indexes", Metrics())
    collections = CollectionService(store, ModelRegistry(), indexes, "none")
    record = collections.create("c", dim=4, metric="l2", index={"type": "flat"})
    store.put_documents("c", [DocumentRow("doc", "t", {"tags": list(range(50))}, "h")])
    rng = np.random.default_rng(0)
    rows = [
        ChunkRow(i, f"t{i}", 0, 1, 1, f"h{i}", rng.random(4, dtype=np.float32).tobytes())
        for i in range(chunks)
    ]
    store.write_chunks("c", record.space_id, [DocumentChunks("doc", "h", rows)])
    indexes.sync_collection("c")
    return store, indexes, record.space_id


def test_hydrate_stays_under_the_variable_limit_and_parses_metadata_once(
    tmp_path: Path,
) -> None:
    store, _, _ = _node(tmp_path, 3000)
    store._reader().setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 999)  # a default build's
    rows = store.hydrate([*range(1, 3001), 10**9])
    assert len(rows) == 3000
    first = rows[1].metadata
    assert all(r.metadata is first for r in rows.values())  # one parse for the document
    store.close()


def test_grouping_never_fetches_more_than_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, indexes, space = _node(tmp_path, 20_000)
    hydrated: list[int] = []
    real = store.hydrate

    def spy(ids: Any, *rest: Any) -> Any:
        hydrated.append(len(ids))
        return real(ids, *rest)

    monkeypatch.setattr(store, "hydrate", spy)
    vec = np.zeros(4, dtype=np.float32)
    hits = search_space(store, indexes, "c", space, vec, 1000, None, True)
    assert [h["document_id"] for h in hits] == ["doc"]
    assert sum(hydrated) <= 16_384, hydrated
    store.close()
