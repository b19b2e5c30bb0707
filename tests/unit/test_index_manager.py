"""IndexManager in process, on a real Store in a tmp dir and random clustered vectors: build from
the store, apply the change log, snapshot and reload, the retrain and compaction triggers, replace
and drop. No server: a failure names the manager function that broke."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.errors import NotFound
from embedstack.index.faiss_index import FaissIndex
from embedstack.obs.metrics import Metrics
from embedstack.registry import indexes
from embedstack.registry.indexes import IndexConfig, IndexManager
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store
from tests.conftest import clustered, store_with_space

pytestmark = pytest.mark.usefixtures("single_omp_thread")

C, SPACE, DIM = "docs", "space-1", 32
VECS = clustered(1000, 0, dim=DIM)


def config(index_type: str = "exact", **params: Any) -> IndexConfig:
    return IndexConfig(C, SPACE, DIM, "cosine", index_type, params)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return store_with_space(tmp_path / "store.db", C, SPACE, DIM)


@pytest.fixture()
def metrics() -> Metrics:
    return Metrics()


@pytest.fixture()
def manager(store: Store, tmp_path: Path, metrics: Metrics) -> IndexManager:
    return IndexManager(store, tmp_path / "indexes", metrics)


def write(store: Store, rows: range) -> list[int]:
    """One document with one chunk per row of VECS; returns the new chunk ids, in row order."""
    before = set(store.all_chunk_ids(C, SPACE))
    docs = [DocumentRow(f"d{i}", f"text {i}", {}, f"h{i}") for i in rows]
    store.put_documents(C, docs)
    chunks = [
        DocumentChunks(
            f"d{i}", f"h{i}", [ChunkRow(0, f"text {i}", 0, 6, 2, f"c{i}", VECS[i].tobytes())]
        )
        for i in rows
    ]
    assert store.write_chunks(C, SPACE, chunks).added == len(rows)
    return sorted(set(store.all_chunk_ids(C, SPACE)) - before)


def delete(store: Store, rows: range) -> None:
    for i in rows:
        store.delete_document(C, f"d{i}")


def top1(manager: IndexManager, rows: range) -> list[int]:
    _, got = manager.search(C, SPACE, VECS[list(rows)], 1)
    return got[:, 0].tolist()


def gauge(metrics: Metrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, {"collection": C, "space": SPACE})


def test_open_builds_from_the_store(store: Store, manager: IndexManager, metrics: Metrics) -> None:
    ids = write(store, range(300))
    live = manager.open(config())
    assert live.index.count() == 300
    assert live.applied_seq == store.max_seq(C, SPACE)
    assert top1(manager, range(0, 300, 30)) == ids[::30]
    assert manager.get(C, SPACE) is live and manager.open(config()) is live  # same config: reused
    assert gauge(metrics, "embedstack_index_vectors") == 300


def test_sync_applies_the_change_log(store: Store, manager: IndexManager) -> None:
    ids = write(store, range(100))
    live = manager.open(config())
    new = write(store, range(100, 150))
    delete(store, range(10))
    seq = store.max_seq(C, SPACE)
    assert not manager.caught_up(C, seq)
    assert manager.sync(C, SPACE) == seq == live.applied_seq
    assert manager.caught_up(C, seq)
    assert live.index.count() == 140
    _, got = manager.search(C, SPACE, VECS[:10], 5)
    assert not np.isin(got, ids[:10]).any()
    assert top1(manager, range(100, 150, 10)) == new[::10]


def test_snapshot_then_reload_replays_later_changes(
    store: Store, tmp_path: Path, manager: IndexManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(store, range(200))
    manager.open(config("hnsw"))
    assert manager.snapshot(C, SPACE)
    assert not manager.snapshot(C, SPACE)  # nothing moved since
    later = write(store, range(200, 250))
    delete(store, range(20))

    def no_rebuild(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("reopened by rebuilding instead of loading the snapshot")

    monkeypatch.setattr(indexes, "create_index", no_rebuild)
    reopened = IndexManager(store, tmp_path / "indexes", Metrics())
    live = reopened.open(config("hnsw"))
    assert live.index.count() == 230 and live.applied_seq == store.max_seq(C, SPACE)
    assert top1(reopened, range(200, 250, 10)) == later[::10]


def test_a_snapshot_of_other_settings_is_rebuilt(
    store: Store, tmp_path: Path, manager: IndexManager
) -> None:
    write(store, range(100))
    manager.open(config("hnsw"))
    manager.snapshot(C, SPACE)
    live = IndexManager(store, tmp_path / "indexes", Metrics()).open(config("exact"))
    assert type(live.index).__name__ == "ExactIndex" and live.index.count() == 100


def test_growth_past_the_trained_size_retrains(store: Store, manager: IndexManager) -> None:
    write(store, range(200))
    cfg = config("ivf_flat", nlist=4, train_min=200, retrain_growth=2.0, recall_floor=0)
    live = manager.open(cfg)
    before = live.index
    assert before.trained and not before.needs_retrain()
    write(store, range(200, 400))  # 400 == 2 x 200: not past it
    manager.sync(C, SPACE)
    assert live.index is before
    ids = write(store, range(400, 401))
    manager.sync(C, SPACE)
    assert live.index is not before  # swapped for a retrained index
    assert live.index.trained and not live.index.needs_retrain() and live.index.count() == 401
    assert top1(manager, range(400, 401)) == ids


def test_tombstones_past_the_ratio_compact(
    store: Store, manager: IndexManager, metrics: Metrics
) -> None:
    ids = write(store, range(200))
    live = manager.open(config("hnsw", M=8, ef_construction=40))
    delete(store, range(30))  # 15%: under the 20% threshold
    manager.sync(C, SPACE)
    before = live.index
    assert before.tombstone_ratio() == pytest.approx(0.15)
    assert gauge(metrics, "embedstack_index_tombstones") == 30
    delete(store, range(30, 50))  # 25%: compact
    manager.sync(C, SPACE)
    assert live.index is not before
    assert live.index.tombstone_ratio() == 0.0 and live.index.count() == 150
    assert gauge(metrics, "embedstack_index_tombstones") == 0
    _, got = manager.search(C, SPACE, VECS[:50], 5)
    assert not np.isin(got, ids[:50]).any()


def test_replace_rebuilds_aside_and_swaps(
    store: Store, tmp_path: Path, manager: IndexManager
) -> None:
    ids = write(store, range(100))
    old = manager.open(config())
    manager.snapshot(C, SPACE)
    cfg = config("hnsw", M=8)
    fresh = manager.replace(cfg)
    assert fresh is not old and manager.get(C, SPACE) is fresh
    assert isinstance(fresh.index, FaissIndex) and fresh.index.count() == 100
    assert old.index.count() == 100  # readers of the old reference still work
    assert top1(manager, range(0, 100, 10)) == ids[::10]
    reopened = IndexManager(store, tmp_path / "indexes", Metrics()).open(cfg)
    assert isinstance(reopened.index, FaissIndex)  # the snapshot on disk is the new index


def test_drop_forgets_the_index_and_its_files(
    store: Store, tmp_path: Path, manager: IndexManager
) -> None:
    write(store, range(50))
    manager.open(config())
    manager.snapshot(C, SPACE)
    folder = tmp_path / "indexes" / C / SPACE
    assert folder.exists()
    manager.drop(C)
    assert not folder.exists() and manager.open_keys() == []
    with pytest.raises(NotFound):
        manager.get(C, SPACE)
