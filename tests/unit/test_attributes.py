"""Metadata filters evaluated in memory (index/attributes.py) select exactly what the SQL
filter (storage/filters.py) selects, on mixed-type metadata and every operator; and through
IndexManager on a real Store (registry/filtering.py): filtered hits equal an exact filtered
search, and stay equal after appends, deletes, a metadata-only update and a compaction."""

from __future__ import annotations

import random
import sqlite3
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from embedstack.errors import InvalidInput
from embedstack.index import faiss_index
from embedstack.index.attributes import Attributes
from embedstack.obs.metrics import Metrics
from embedstack.registry.indexes import IndexConfig, IndexManager
from embedstack.storage.filters import conditions, filter_sql, json_path
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store
from tests.conftest import clustered, store_with_space

KEYS = ("a", "b", "c")
VALUES: list[Any] = [0, 1, -1, 2, 7, 1.0, 2.5, -0.0, 1e300, 2**53 + 1, 2**63 - 1, -(2**63),
                     True, False, None, "", "a", "B", "b", "é", "10", "1", "zz"]  # fmt: skip
STORED: list[Any] = [*VALUES, [1, 2], {"x": 1}, "missing"]  # "missing": the key is absent
OPS = ("$eq", "$ne", "$gt", "$gte", "$lt", "$lte", "$in", "$nin")


def random_metadata(rng: random.Random) -> dict[str, Any]:
    out = {}
    for key in KEYS:
        value = rng.choice(STORED)
        if value != "missing":
            out[key] = value
    return out


def random_filter(rng: random.Random) -> dict[str, Any]:
    flt: dict[str, Any] = {}
    for key in rng.sample(KEYS, rng.randint(1, 2)):
        ops = {}
        for op in rng.sample(OPS, rng.randint(1, 2)):
            if op in ("$in", "$nin"):
                ops[op] = rng.sample(VALUES, rng.randint(1, 3))
            else:
                ops[op] = rng.choice(VALUES)
        flt[key] = ops if rng.random() < 0.8 or "$eq" not in ops else ops["$eq"]
    return flt


def test_masks_select_what_sql_selects() -> None:
    rng = random.Random(7)
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE d(id INTEGER PRIMARY KEY, metadata TEXT)")
    rows = [(i, orjson.dumps(random_metadata(rng)).decode()) for i in range(400)]
    db.executemany("INSERT INTO d VALUES (?, ?)", rows)
    attrs = Attributes()
    attrs.append(np.arange(len(rows)), {})
    for key in KEYS:
        got = db.execute("SELECT json_extract(metadata, ?) FROM d ORDER BY id", (json_path(key),))
        attrs.add_key(key, [v for (v,) in got])
    checked = 0
    for _ in range(600):
        flt = random_filter(rng)
        where, params = filter_sql(flt)
        sql = {i for (i,) in db.execute(f"SELECT id FROM d WHERE {where}", params)}
        mine = set(np.flatnonzero(attrs.mask(conditions(flt))).tolist())
        assert mine == sql, f"filter {flt}: memory {sorted(mine ^ sql)[:10]} differ from SQL"
        checked += bool(sql)
    assert checked > 100  # most filters select something: the comparison is not vacuous


def test_realign_carries_values_to_new_positions() -> None:
    attrs = Attributes()
    attrs.append(np.array([10, 11, 12, 13]), {})
    attrs.add_key("k", ["a", 1, None, "b"])
    missing = attrs.realign(np.array([13, 11, 99]))  # a compaction kept 13 and 11, 99 is new
    assert missing.tolist() == [2]
    assert attrs.mask([("k", "$eq", "b")]).tolist() == [True, False, False]
    assert attrs.mask([("k", "$eq", None)]).tolist() == [False, False, True]
    attrs.set(missing, {"k": ["b"]})
    assert attrs.mask([("k", "$in", ["b", 1])]).tolist() == [True, True, True]


# -- through IndexManager, on a real store ------------------------------------------------------
C, SPACE, DIM = "docs", "space-1", 32
N = 1200
VECS = clustered(N, 0, dim=DIM)


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return store_with_space(tmp_path / "store.db", C, SPACE, DIM)


def meta(i: int) -> dict[str, Any]:
    return {"bucket": i % 10, "tag": ["red", "green", "blue"][i % 3], "n": i}


def put(store: Store, rows: range, metadata: Any = meta) -> None:
    """One document of one chunk per row of VECS (text and vector fixed by the row)."""
    docs = [DocumentRow(f"d{i}", f"text {i}", metadata(i), f"h{i}-{metadata(i)}") for i in rows]
    store.put_documents(C, docs)
    chunks = [
        DocumentChunks(
            d.id, d.content_hash, [ChunkRow(0, d.text, 0, 6, 2, f"c{i}", VECS[i].tobytes())]
        )
        for i, d in zip(rows, docs, strict=True)
    ]
    store.write_chunks(C, SPACE, chunks)


def exact_filtered(store: Store, flt: dict[str, Any], q: np.ndarray, k: int) -> list[str]:
    """The documents of the top-k chunks satisfying `flt` by SQL, by brute force."""
    allowed = store.filter_chunk_ids(C, SPACE, flt)
    ids, vecs = store.chunk_vectors(allowed.tolist(), DIM)
    top = np.argsort(-(vecs @ q), kind="stable")[:k]
    rows = store.hydrate(ids[top].tolist())
    return [rows[int(i)].document_id for i in ids[top]]


def served(
    manager: IndexManager, store: Store, flt: dict[str, Any], q: np.ndarray, k: int
) -> list[str]:
    hnsw = manager.get(C, SPACE).config.type == "hnsw"
    knobs = {"ef_search": 128} if hnsw else None
    _, ids = manager.search(C, SPACE, q[None, :], k, knobs=knobs, flt=flt)
    rows = store.hydrate([i for i in ids[0].tolist() if i >= 0])
    return [rows[i].document_id for i in ids[0].tolist() if i >= 0]


FILTERS: list[dict[str, Any]] = [
    {"bucket": 3},  # 10%: the graph with a bitmap, efSearch widened
    {"bucket": {"$in": [1, 2, 3, 4, 5]}, "tag": {"$ne": "red"}},  # about a third
    {"n": {"$gte": 100, "$lt": 130}},  # 30 vectors: an exact scan
    {"tag": "green", "bucket": {"$nin": [0, 1]}, "n": {"$gt": 5}},
]


@pytest.mark.parametrize("index_type", ["hnsw", "flat", "ivf_flat"])
def test_filtered_search_equals_exact(store: Store, tmp_path: Path, index_type: str) -> None:
    manager = IndexManager(store, tmp_path / "indexes", Metrics())
    params = {"nlist": 8, "nprobe": 8} if index_type == "ivf_flat" else {}
    manager.open(IndexConfig(C, SPACE, DIM, "cosine", index_type, params))
    put(store, range(N))
    manager.sync(C, SPACE)
    queries = VECS[::97] + 0.01
    for flt in FILTERS:
        for q in queries:
            assert served(manager, store, flt, q, 10) == exact_filtered(store, flt, q, 10), flt


def test_filters_follow_writes(store: Store, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(faiss_index, "SMALL_ALLOW_MIN", 0)  # the graph path even when small
    manager = IndexManager(store, tmp_path / "indexes", Metrics(), compaction_ratio=0.1)
    manager.open(IndexConfig(C, SPACE, DIM, "cosine", "hnsw", {}))
    put(store, range(600))
    manager.sync(C, SPACE)
    q = VECS[5] + 0.01

    def same(flt: dict[str, Any]) -> None:
        assert served(manager, store, flt, q, 10) == exact_filtered(store, flt, q, 10), flt

    same({"bucket": 5})  # builds the column
    put(store, range(600, N))  # appended positions
    manager.sync(C, SPACE)
    same({"bucket": 5})
    same({"tag": "blue"})  # a second column, read for every position
    # metadata replaced, chunks kept (same text): no change-log entry, the trigger notes it
    put(store, range(0, 300), lambda i: {**meta(i), "bucket": 5 if i % 2 else 6})
    assert served(manager, store, {"bucket": 6}, q, 10) == exact_filtered(
        store, {"bucket": 6}, q, 10
    )
    same({"bucket": 5})
    before = manager.get(C, SPACE).index
    for i in range(300, 500):  # past the compaction ratio: the index is replaced
        store.delete_document(C, f"d{i}")
    manager.sync(C, SPACE)
    assert manager.get(C, SPACE).index is not before
    same({"bucket": 5})
    same({"tag": {"$in": ["blue", "red"]}, "n": {"$lt": 900}})
    assert served(manager, store, {"bucket": 11}, q, 10) == []


def test_bad_filters_name_the_fix(store: Store, tmp_path: Path) -> None:
    manager = IndexManager(store, tmp_path / "indexes", Metrics())
    manager.open(IndexConfig(C, SPACE, DIM, "cosine", "hnsw", {}))
    put(store, range(50))
    manager.sync(C, SPACE)
    with pytest.raises(InvalidInput, match="unknown filter operator"):
        manager.search(C, SPACE, VECS[:1], 5, flt={"bucket": {"$like": 3}})
    with pytest.raises(InvalidInput, match="filter key"):
        manager.search(C, SPACE, VECS[:1], 5, flt={"$bad": 3})


def test_filtered_keys_are_warm_after_a_restart(
    store: Store, tmp_path: Path, monkeypatch: Any
) -> None:
    root = tmp_path / "indexes"
    cfg = IndexConfig(C, SPACE, DIM, "cosine", "hnsw", {})
    manager = IndexManager(store, root, Metrics())
    manager.open(cfg)
    put(store, range(600))
    manager.sync(C, SPACE)
    q = VECS[5] + 0.01
    flt = {"bucket": 5, "tag": {"$ne": "red"}}
    want = exact_filtered(store, flt, q, 10)
    assert served(manager, store, flt, q, 10) == want
    manager.snapshot(C, SPACE)
    # a rebuild with other settings keeps the columns (they move to the new positions)
    columns = manager.get(C, SPACE).filters
    manager.replace(IndexConfig(C, SPACE, DIM, "cosine", "hnsw", {"M": 16}))
    assert manager.get(C, SPACE).filters is columns
    assert served(manager, store, flt, q, 10) == want

    # the next start builds the columns of the keys filtered before, without a query
    again = IndexManager(store, root, Metrics())
    live = again.open(IndexConfig(C, SPACE, DIM, "cosine", "hnsw", {"M": 16}))
    for _ in range(500):
        if live.filters is not None and live.filters.keys() == {"bucket", "tag"}:
            break
        time.sleep(0.01)
    else:
        raise AssertionError("the filter columns were not warmed within 5 s")

    def scan(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("chunk_ids") is None and kwargs.get("changed_after") is None:
            raise AssertionError("a warmed column was read again from the store")
        return real(*args, **kwargs)

    real = store.field_values
    monkeypatch.setattr(store, "field_values", scan)
    assert served(again, store, flt, q, 10) == want

    # a noted-keys file that cannot be read: the index opens, the filter builds on demand
    monkeypatch.undo()
    (root / C / f"{SPACE}.filter-keys.json").write_text("{not json")
    third = IndexManager(store, root, Metrics())
    assert third.open(IndexConfig(C, SPACE, DIM, "cosine", "hnsw", {"M": 16})).filters is None
    assert served(third, store, flt, q, 10) == want
    third.drop(C, SPACE)
    assert not (root / C / f"{SPACE}.filter-keys.json").exists()


# -- online recall's truth from the index's own vectors ------------------------------------------
def test_exact_search_over_the_index_vectors() -> None:
    from embedstack.index.common import brute_force
    from embedstack.index.faiss_index import FaissIndex

    ids = np.arange(100, 100 + N, dtype=np.int64)
    hnsw = FaissIndex(DIM, "cosine", "hnsw", {})
    hnsw.add(ids, VECS)
    hnsw.remove(ids[:50])  # tombstones are not truth
    q = VECS[10:13] + 0.01
    got = hnsw.exact_search(q, 10)
    assert got is not None
    unit = VECS / np.linalg.norm(VECS, axis=1, keepdims=True)
    _, want = brute_force(
        unit[50:], ids[50:], q / np.linalg.norm(q, axis=1, keepdims=True), 10, "ip"
    )
    assert got[1].tolist() == want.tolist()
    sq8 = FaissIndex(DIM, "cosine", "sq8", {})
    sq8.add(ids, VECS)  # trained: it keeps codes only
    assert sq8.exact_search(q, 10) is None


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_exact_search_in_slices(metric: str, monkeypatch: Any) -> None:
    """The scan releases the index's lock between slices: the same truth in any slicing, with
    removed vectors in some slices and fewer live vectors than k."""
    from embedstack.index.common import brute_force
    from embedstack.index.faiss_index import FaissIndex

    ids = np.arange(N, dtype=np.int64) * 3
    index = FaissIndex(DIM, metric, "hnsw", {})
    index.add(ids, VECS)
    gone = ids[(np.arange(N) % 7 == 0) | (np.arange(N) > 1000)]
    index.remove(gone)
    keep = ~np.isin(ids, gone)
    base = VECS if metric == "l2" else VECS / np.linalg.norm(VECS, axis=1, keepdims=True)
    q = VECS[10:14] + 0.01
    q = q if metric == "l2" else q / np.linalg.norm(q, axis=1, keepdims=True)
    want = brute_force(base[keep], ids[keep], q, 10, "l2" if metric == "l2" else "ip")
    for size in (1 << 16, 97, 1):
        monkeypatch.setattr(faiss_index, "EXACT_SLICE", size)
        got = index.exact_search(q, 10)
        assert got is not None
        assert got[1].tolist() == want[1].tolist(), size
        np.testing.assert_allclose(got[0], want[0], rtol=1e-4, atol=1e-4)
    index.remove(ids[keep][3:])  # 3 live vectors left: the rest is padding
    monkeypatch.setattr(faiss_index, "EXACT_SLICE", 50)
    got = index.exact_search(q[:1], 10)
    assert got is not None and sorted(got[1][0, :3].tolist()) == sorted(ids[keep][:3].tolist())
    assert got[1][0, 3:].tolist() == [-1] * 7


def test_online_recall_takes_its_time_share(store: Store, tmp_path: Path) -> None:
    from embedstack.registry.quality import QualityConfig, QualityObserver

    manager = IndexManager(store, tmp_path / "indexes", Metrics())
    manager.open(IndexConfig(C, SPACE, DIM, "cosine", "hnsw", {}))
    put(store, range(N))
    manager.sync(C, SPACE)
    metrics = Metrics()
    config = QualityConfig(recall_fraction=1.0, recall_max_per_s=1000.0, recall_time_share=1e-6)
    quality = QualityObserver(store, manager, metrics, config)

    def counted(outcome: str) -> float:
        labels = {"collection": C, "space": SPACE, "outcome": outcome}
        return (
            metrics.registry.get_sample_value("embedstack_online_recall_samples_total", labels)
            or 0.0
        )

    quality._check(C, SPACE, VECS[3])  # checked with the index's own vectors: no store copy
    assert counted("checked") == 1 and not quality._exact
    quality._check(C, SPACE, VECS[4])  # within the pause after the first: dropped
    assert counted("checked") == 1 and counted("dropped") == 1
    assert quality.report(C, SPACE)["recall"]["estimate"]["recall"] == 1.0
