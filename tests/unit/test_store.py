"""The SQLite store: migrations, upserts, chunk replacement with stale-version protection,
the change log, metadata filters and the space catalog."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from embedstack.errors import Conflict, InvalidInput, NotFound
from embedstack.storage.migrations import MIGRATIONS
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store
from embedstack.types import ChunkingSpec, CollectionConfig, IndexSpec, ModelSpec


def _spec(name: str) -> ModelSpec:
    return ModelSpec(name, "r1", "fp-" + name, 4, "cosine", 16)


CONFIG = CollectionConfig(4, "cosine", IndexSpec("flat"), "m1", _spec("m1"), ChunkingSpec())


def _vec(seed: int, dim: int = 4) -> bytes:
    return np.random.default_rng(seed).normal(size=dim).astype(np.float32).tobytes()


def _chunk(ordinal: int, text: str, seed: int) -> ChunkRow:
    return ChunkRow(ordinal, text, 0, len(text), 3, f"h-{text}", _vec(seed))


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "store.db")
    s.create_collection("c", CONFIG, "sp1")
    return s


def test_migrations_are_idempotent(tmp_path: Path, store: Store) -> None:
    store.close()
    again = Store(store.path)
    assert again.get_collection("c").space_id == "sp1"
    versions = again._reader().execute("SELECT version FROM schema_version").fetchall()
    assert [v[0] for v in versions] == list(range(1, len(MIGRATIONS) + 1))


def test_collection_config_is_typed_and_its_stored_json_keeps_its_shape(store: Store) -> None:
    record = store.get_collection("c")
    assert record.config == CONFIG
    raw = store._reader().execute("SELECT config FROM collections WHERE name='c'").fetchone()[0]
    stored = orjson.loads(raw)
    assert set(stored) == {"model", "model_spec", "dim", "metric", "chunking", "index"}
    assert stored["index"] == {"type": "flat", "params": {}}
    assert stored["chunking"] == {"mode": "tokens", "size": 256, "overlap": 32}
    assert CollectionConfig.from_json(stored) == CONFIG
    byo = CollectionConfig(8, "l2", IndexSpec("hnsw", {"M": 16}))
    assert set(byo.to_json()) == {"model", "model_spec", "dim", "metric", "index"}
    assert CollectionConfig.from_json(byo.to_json()) == byo
    assert store.spaces("c")[0].model_spec == _spec("m1")


def test_put_documents_reports_only_changes(store: Store) -> None:
    docs = [DocumentRow("a", "x", {}, "h1"), DocumentRow("b", "y", {}, "h2")]
    assert store.put_documents("c", docs) == ["a", "b"]
    store.write_chunks("c", "sp1", [DocumentChunks("a", "h1", [_chunk(0, "x", 1)])])
    # a is indexed and unchanged: no work; b is not yet indexed: still pending
    assert store.put_documents("c", docs) == ["b"]
    assert store.pending_documents() == {"c": ["b"]}
    with pytest.raises(NotFound):
        store.put_documents("nope", docs)


def test_write_chunks_replaces_keeps_and_logs_changes(store: Store) -> None:
    store.put_documents("c", [DocumentRow("a", "x y", {}, "h1")])
    first = store.write_chunks(
        "c", "sp1", [DocumentChunks("a", "h1", [_chunk(0, "x", 1), _chunk(1, "y", 2)])]
    )
    assert (first.added, first.removed, first.kept) == (2, 0, 0)
    store.put_documents("c", [DocumentRow("a", "x z", {}, "h2")])
    second = store.write_chunks(
        "c", "sp1", [DocumentChunks("a", "h2", [_chunk(0, "x", 1), _chunk(1, "z", 3)])]
    )
    assert (second.added, second.removed, second.kept) == (1, 1, 1)
    ops = [op for _, _, op in store.changes_since("c", "sp1", 0)]
    assert ops == [1, 1, 1, -1]
    assert second.max_seq == store.max_seq("c", "sp1") == 4


def test_stale_version_is_not_written(store: Store) -> None:
    store.put_documents("c", [DocumentRow("a", "v1", {}, "h1")])
    store.put_documents("c", [DocumentRow("a", "v2", {}, "h2")])  # changed while a worker ran
    result = store.write_chunks("c", "sp1", [DocumentChunks("a", "h1", [_chunk(0, "v1", 1)])])
    assert result.stale_documents == 1 and result.added == 0
    store.delete_document("c", "a")
    gone = store.write_chunks("c", "sp1", [DocumentChunks("a", "h2", [_chunk(0, "v2", 1)])])
    assert gone.stale_documents == 1


def test_delete_document_logs_removals(store: Store) -> None:
    store.put_documents("c", [DocumentRow("a", "x", {}, "h1")])
    store.write_chunks("c", "sp1", [DocumentChunks("a", "h1", [_chunk(0, "x", 1)])])
    seq = store.delete_document("c", "a")
    assert store.changes_since("c", "sp1", seq - 1)[0][2] == -1
    with pytest.raises(NotFound):
        store.delete_document("c", "a")


def test_filters(store: Store) -> None:
    metas = [{"lang": "en", "year": 2020, "ok": True}, {"lang": "de", "year": 2023, "ok": False},
             {"lang": "en", "year": 2024}]  # fmt: skip
    for i, meta in enumerate(metas):
        store.put_documents("c", [DocumentRow(f"d{i}", "t", meta, f"h{i}")])
        store.write_chunks("c", "sp1", [DocumentChunks(f"d{i}", f"h{i}", [_chunk(0, f"t{i}", i)])])

    def docs(flt: dict[str, object]) -> set[str]:
        ids = store.filter_chunk_ids("c", "sp1", flt)
        return {row.document_id for row in store.hydrate(ids.tolist()).values()}

    assert docs({"lang": "en"}) == {"d0", "d2"}
    assert docs({"lang": {"$in": ["de", "fr"]}}) == {"d1"}
    assert docs({"year": {"$gte": 2023}, "lang": "en"}) == {"d2"}
    assert docs({"ok": True}) == {"d0"}
    assert docs({"ok": None}) == {"d2"}
    assert docs({"ok": {"$ne": None}}) == {"d0", "d1"}
    assert docs({"lang": {"$nin": ["en"]}}) == {"d1"}
    for bad in ({"a": {"$regex": "x"}}, {'a"b': 1}, {"a": {"$in": []}}, {"a": [1]}, {"a": {}}):
        with pytest.raises(InvalidInput):
            docs(bad)  # type: ignore[arg-type]


def test_catalog_cutover_rollback_retire_and_aliases(store: Store) -> None:
    store.put_documents("c", [DocumentRow("a", "x", {}, "h1")])
    store.write_chunks("c", "sp1", [DocumentChunks("a", "h1", [_chunk(0, "x", 1)])])
    up = store.start_shadow("c", "sp2", "m2", _spec("m2"), total=1, options={})
    assert up.state == "backfilling" and up.from_space == "sp1"
    with pytest.raises(Conflict):
        store.start_shadow("c", "sp3", "m3", _spec("m3"), total=1, options={})
    store.write_chunks(
        "c", "sp2", [DocumentChunks("a", "h1", [_chunk(0, "x", 5)])], mark_indexed=False
    )
    assert [s.state for s in store.spaces("c")] == ["serving", "shadow"]
    assert store.cut_over("c", "sp2") == "sp1"
    assert store.get_collection("c").space_id == "sp2"
    assert {s.space_id: s.state for s in store.spaces("c")} == {"sp1": "previous", "sp2": "serving"}
    assert store.collection_stats("c")["chunks"] == 1  # the serving space's chunks only
    with pytest.raises(Conflict):
        store.retire("c", "sp2")  # serving
    store.retire("c", "sp1")
    assert store.all_chunk_ids("c", "sp1") == [] and len(store.all_chunk_ids("c", "sp2")) == 1
    store.set_alias("prod", "c")
    assert store.resolve("prod") == "c" and store.resolve("c") == "c"
    with pytest.raises(Conflict):
        store.set_alias("c", "c")
    with pytest.raises(Conflict):
        store.create_collection("prod", CONFIG, "spx")
    store.delete_collection("c")
    assert store.aliases() == {} and store.upgrades() == []


def test_chunk_ids_written_in_batches_never_reuse_a_deleted_id(store: Store) -> None:
    store.put_documents("c", [DocumentRow(f"d{i}", f"t{i}", {}, f"v{i}") for i in range(3)])
    docs = [DocumentChunks(f"d{i}", f"v{i}", [_chunk(0, f"a{i}", i), _chunk(1, f"b{i}", i)])
            for i in range(3)]  # fmt: skip
    first = store.write_chunks("c", "sp1", docs)
    assert (first.added, first.removed) == (6, 0)
    ids = store.all_chunk_ids("c", "sp1")
    assert len(ids) == 6
    store.delete_document("c", "d2")  # the highest ids go
    store.put_documents("c", [DocumentRow("d2", "t2 again", {}, "v2b")])
    again = store.write_chunks("c", "sp1", [DocumentChunks("d2", "v2b", [_chunk(0, "new", 9)])])
    assert again.added == 1
    (new,) = set(store.all_chunk_ids("c", "sp1")) - set(ids)
    assert new > max(ids)  # AUTOINCREMENT's promise kept by the batched insert
    seq = [row[1] for row in store.changes_since("c", "sp1", 0)]
    assert seq.count(new) == 1 and len(seq) == 6 + 2 + 1  # adds, removals of d2, the new add


def test_cached_catalog_reads_follow_every_catalog_write(store: Store) -> None:
    assert store.resolve_collection("c").name == "c"
    assert store.catalog_cached("c") is False  # spaces not read yet
    assert [s.space_id for s in store.serving_spaces("c")] == ["sp1"]
    assert store.catalog_cached("c")
    store.create_collection("d", CONFIG, "sp1")
    assert not store.catalog_cached("c")  # any catalog write expires every entry
    store.set_alias("live", "c")
    assert store.resolve_collection("live").name == "c"
    store.set_alias("live", "d")
    assert store.resolve_collection("live").name == "d"
    store.delete_alias("live")
    with pytest.raises(NotFound):
        store.resolve_collection("live")
    store.delete_collection("d")
    with pytest.raises(NotFound):
        store.resolve_collection("d")


BYO = CollectionConfig(4, "cosine", IndexSpec("flat"))


def _byo_row(doc_id: str, seed: int, text: str = "") -> DocumentRow:
    return DocumentRow(doc_id, text, {"n": seed}, f"h{doc_id}{seed}", vector=_vec(seed))


def test_put_vectors_stores_each_vector_once_with_its_chunk(store: Store) -> None:
    store.create_collection("v", BYO, "spv")
    done = store.put_vectors("v", [_byo_row("a", 1), _byo_row("b", 2, "some text")])
    assert done is not None and done.changed == ["a", "b"] and (done.added, done.removed) == (2, 0)
    assert done.seq == store.max_seq("v", "spv")
    db = store._reader()
    assert db.execute("SELECT count(*) FROM documents WHERE vector IS NOT NULL").fetchone() == (0,)
    ids, vecs = store.chunk_vectors(store.all_chunk_ids("v", "spv"), 4)
    assert vecs.tobytes() == _vec(1) + _vec(2)
    assert store.pending_documents() == {}  # indexed in the same transaction: no job to redo
    # a chunk with no text has nothing for the lexical index; one with text does
    assert db.execute("SELECT document_id, lexical FROM chunks ORDER BY id").fetchall() == [
        ("a", 0),
        ("b", 1),
    ]
    assert store.lexical_search("v", "spv", "text", 5)[0] == [int(ids[1])]
    # the same again: nothing written; a changed vector replaces its chunk
    again = store.put_vectors("v", [_byo_row("a", 1), _byo_row("b", 3, "some text")])
    assert again is not None and again.changed == ["b"] and (again.added, again.removed) == (1, 1)
    assert store.chunk_vectors(store.all_chunk_ids("v", "spv"), 4)[1].tobytes() == _vec(1) + _vec(3)
    store.lexical_check()


def test_put_vectors_leaves_a_collection_with_a_model_space_to_the_worker(store: Store) -> None:
    assert store.put_vectors("c", [_byo_row("a", 1)]) is None
    assert store.get_documents("c", ["a"]) == []  # nothing written
    with pytest.raises(NotFound):
        store.put_vectors("nope", [_byo_row("a", 1)])


def test_text_chunk_hash_index_skips_vector_chunks(store: Store) -> None:
    names = {r[0] for r in store._reader().execute("SELECT name FROM sqlite_master")}
    assert "chunks_by_text_hash" in names and "chunks_by_hash" not in names
    store.put_documents("c", [DocumentRow("a", "x", {}, "h1")])
    store.write_chunks("c", "sp1", [DocumentChunks("a", "h1", [_chunk(0, "x", 1)])])
    assert store.vectors_by_hash("c", "sp1", ["h-x", "h-missing"]) == {"h-x": _vec(1)}
    plan = (
        store._reader()
        .execute(
            "EXPLAIN QUERY PLAN SELECT hash, vector FROM chunks WHERE collection=? AND space_id=?"
            " AND hash IN (?) AND token_count > 0",
            ("c", "sp1", "h-x"),
        )
        .fetchall()
    )
    assert "chunks_by_text_hash" in str(plan)
    assert store._reader().execute("PRAGMA page_size").fetchone() == (16384,)
