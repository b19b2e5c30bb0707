"""The pure parts of hybrid retrieval: FTS5 query escaping and the lexical index in a real store,
fusion, document scoring, query settings and the evaluation metrics."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.errors import InvalidInput
from embedstack.registry.evaluate import (
    Label,
    Setting,
    default_settings,
    evaluate,
    format_table,
    load_labels,
    ndcg_at,
    recall_at,
    reciprocal_rank,
)
from embedstack.registry.fusion import blend, min_max, rrf
from embedstack.registry.hybrid import (
    Retrieval,
    check_lexical_fields,
    check_settings,
    collection_settings,
    require_lexical,
    resolve,
)
from embedstack.registry.scoring import ChunkScore, score_documents
from embedstack.storage.lexical import match_expression, title
from embedstack.storage.migrations import MIGRATIONS
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store
from embedstack.types import CollectionConfig, IndexSpec

NASTY = ['"', "a*", "NEAR(a b)", "-x", "col:val", "x AND y OR NOT z", "^a", "(", ")", "'", "{a}"]


@pytest.mark.parametrize("text", NASTY)
def test_match_expression_is_always_valid_fts5(text: str) -> None:
    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    conn.execute("INSERT INTO t VALUES ('a b x y z val col NEAR AND')")
    expr = match_expression(text)
    if expr is not None:
        conn.execute("SELECT * FROM t WHERE t MATCH ?", (expr,)).fetchall()


def test_match_expression_quotes_and_dedupes_words() -> None:
    got = match_expression('str.split() "AND" x')
    assert got == '"str" OR "split" OR "x"'  # no stop words, so no phrase
    assert match_expression("str.split() x") == '"str" OR "split" OR "x" OR "str split x"'
    assert match_expression("the of") == '"the" OR "of" OR "the of"'  # stop words only: kept
    assert match_expression("*** --- ") is None
    assert match_expression("_") is None
    assert match_expression("os_path") == '"os_path"'  # one word: no phrase
    assert match_expression("os_path x") == '"os_path" OR "x" OR "os_path x"'


def test_title_text_from_metadata() -> None:
    meta = {"title": "Data Structures", "tags": ["a", 2, None, {"x": 1}], "flag": True}
    assert title(meta, ("title", "tags", "flag", "missing")) == "Data Structures a 2"
    assert title(meta, ()) == ""


def _store(tmp_path: Path, **config: Any) -> Store:
    store = Store(tmp_path / "store.db")
    store.create_collection("c", CollectionConfig(4, "cosine", IndexSpec("flat"), **config), "sp1")
    return store


def _write(store: Store, doc_id: str, texts: list[str], space: str = "sp1", **meta: object) -> None:
    doc = DocumentRow(doc_id, " ".join(texts), {"k": doc_id, **meta}, "h" + doc_id)
    store.put_documents("c", [doc])
    vec = np.zeros(4, np.float32).tobytes()
    chunks = [ChunkRow(i, t, 0, len(t), 3, f"{doc_id}{i}{t}", vec) for i, t in enumerate(texts)]
    store.write_chunks("c", space, [DocumentChunks(doc_id, "h" + doc_id, chunks)])


def _fts_rows(store: Store) -> int:
    with store._tx() as c:
        return int(c.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0])


def test_lexical_index_follows_chunk_writes_and_deletes(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _write(store, "a", ["the quick brown fox", "jumps over"])
    _write(store, "b", ["lazy dogs sleep", "foxes run quickly"])
    _write(store, "b2", ["foxes in another space"], space="sp2")
    ids, scores = store.lexical_search("c", "sp1", "fox", 10)
    assert len(ids) == 2 and scores[0] >= scores[1] > 0  # porter: fox ~ foxes
    assert store.hydrate(ids)[ids[0]].document_id in {"a", "b"}
    ids, _ = store.lexical_search("c", "sp1", "fox", 10, {"k": "b"})
    assert [store.hydrate(ids)[i].document_id for i in ids] == ["b"]
    assert len(store.lexical_search("c", "sp2", "fox", 10)[0]) == 1
    store.delete_document("c", "a")
    ids, _ = store.lexical_search("c", "sp1", "fox", 10)
    assert [store.hydrate(ids)[i].document_id for i in ids] == ["b"]
    store.lexical_check()
    store.delete_collection("c")
    assert store.lexical_search("c", "sp1", "fox", 10) == ([], [])
    store.lexical_check()
    store.close()


def test_title_field_is_indexed_and_weighted(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _write(store, "body", ["ranking documents by vectors", "more ranking"])  # in the text
    _write(store, "head", ["unrelated words", "other words"], title="Ranking")  # in the title
    ids, _ = store.lexical_search("c", "sp1", "ranking", 10)
    owners = [store.hydrate(ids)[i].document_id for i in ids]
    assert owners[:2] == ["head", "head"] and set(owners) == {"head", "body"}
    store.lexical_check()
    store.close()


def test_lexical_off_collection_writes_no_fts_rows(tmp_path: Path) -> None:
    store = _store(tmp_path, lexical=False)
    store.create_collection("on", CollectionConfig(4, "cosine", IndexSpec("flat")), "sp1")
    _write(store, "a", ["the quick brown fox", "jumps over"], title="fox")
    assert _fts_rows(store) == 0 and store.lexical_search("c", "sp1", "fox", 10) == ([], [])
    with store._tx() as c:
        assert c.execute("SELECT lexical, title FROM chunks").fetchall() == [(0, "")] * 2
    store.delete_document("c", "a")  # a delete must not touch FTS rows it never wrote
    _write(store, "b", ["foxes again"])
    store.lexical_check()
    assert _fts_rows(store) == 0
    assert CollectionConfig.from_json(store.get_collection("c").config.to_json()).lexical is False
    store.delete_collection("c")
    store.lexical_check()
    store.close()


def test_migration_backfills_the_lexical_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store made before migration 5 (text-only FTS, no lexical/title columns) gets its chunks
    indexed with their document titles by it."""
    import embedstack.storage.store as store_module

    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS[:4])
    store = _store(tmp_path)
    store.put_documents("c", [DocumentRow("a", "x", {"title": "Old Title"}, "ha")])
    with store._tx() as c:
        c.execute(
            "INSERT INTO chunks(collection, space_id, document_id, ordinal, text, start, end,"
            " token_count, hash, vector) VALUES ('c', 'sp1', 'a', 0, 'ancient words', 0, 1, 1,"
            " 'h', x'00')"
        )
    store.close()
    monkeypatch.setattr(store_module, "MIGRATIONS", MIGRATIONS)
    store = Store(tmp_path / "store.db")
    assert len(store.lexical_search("c", "sp1", "ancient", 5)[0]) == 1
    assert len(store.lexical_search("c", "sp1", "old title", 5)[0]) == 1  # backfilled title
    store.lexical_check()
    _write(store, "b", ["ancient again"])  # and the triggers are back
    assert len(store.lexical_search("c", "sp1", "ancient", 5)[0]) == 2
    store.close()


def test_rrf_and_blend() -> None:
    dense = ([1, 2, 3], [0.9, 0.8, 0.1])
    lexical = ([3, 4], [12.0, 3.0])
    fused = rrf(dense, lexical)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)
    assert max(fused, key=fused.__getitem__) == 3  # in both lists
    assert rrf(dense, lexical, alpha=1.0).keys() == {1, 2, 3}
    b = blend(dense, lexical, alpha=0.5)
    assert b[1] == pytest.approx(0.5) and b[3] == pytest.approx(0.5) and b[4] == 0.0
    assert min_max([2.0, 2.0]) == [1.0, 1.0] and min_max([]) == []


def test_document_scorings() -> None:
    chunks = [
        ChunkScore(1, "a", 3, 0.80),
        ChunkScore(2, "b", 0, 0.78),
        ChunkScore(3, "b", 1, 0.70),
        ChunkScore(4, "b", 2, 0.60),
        ChunkScore(5, "a", 4, -0.2),
    ]
    assert [d.document_id for d in score_documents(chunks, "max")] == ["a", "b"]
    by_sum = score_documents(chunks, "max_sum")
    assert [d.document_id for d in by_sum] == ["b", "a"]
    assert by_sum[0].score == pytest.approx(0.78 + 0.3 * (0.70 + 0.5 * 0.60))
    assert by_sum[1].score == pytest.approx(0.80)  # negative chunks add nothing
    prior = score_documents(chunks, "first_prior")
    assert [d.document_id for d in prior] == ["b", "a"] and prior[0].best.chunk_id == 2
    neg = [ChunkScore(1, "a", 0, -1.0), ChunkScore(2, "b", 1, -1.05)]  # negated l2 distances
    assert [d.document_id for d in score_documents(neg, "first_prior")] == ["a", "b"]


def test_settings_resolve_and_check() -> None:
    assert resolve({}, None) == Retrieval()
    assert resolve({"mode": None}, {"mode": "lexical"}).mode == "lexical"
    assert resolve({"mode": "dense"}, {"mode": "lexical"}).mode == "dense"
    assert collection_settings({}, has_model=False) == {"mode": "dense"}
    assert collection_settings({"mode": "hybrid"}, has_model=False) == {"mode": "hybrid"}
    for bad in ({"mode": "x"}, {"alpha": 2}, {"alpha": True}, {"fusion": "sum"}, {"x": 1}):
        with pytest.raises(InvalidInput):
            check_settings(bad)
    assert collection_settings({}, has_model=True, lexical=False) == {"mode": "dense"}
    require_lexical("dense", False, "c")
    require_lexical("hybrid", True, "c")
    for mode in ("lexical", "hybrid"):
        with pytest.raises(InvalidInput, match='"mode": "dense"'):
            require_lexical(mode, False, "c")
    assert check_lexical_fields(["title", "h", "title"]) == ("title", "h")
    for bad_fields in ("title", [""], [1], ["x"] * 17):
        with pytest.raises(InvalidInput, match="lexical"):
            check_lexical_fields(bad_fields)


def test_metrics() -> None:
    rel = frozenset({"a", "b"})
    assert recall_at(["x", "a", "y"], rel, 10) == 0.5
    assert recall_at(["x", "a", "b"], rel, 2) == 0.5
    assert reciprocal_rank(["x", "a"], rel, 10) == 0.5
    assert reciprocal_rank(["x"], rel, 10) == 0.0
    assert ndcg_at(["a", "b"], rel, 10) == pytest.approx(1.0)
    assert 0 < ndcg_at(["x", "a"], rel, 10) < 1


def test_evaluate_and_labels(tmp_path: Path) -> None:
    path = tmp_path / "labels.jsonl"
    path.write_text('{"query": "q1", "relevant": ["a"]}\n\n{"query": "q2", "relevant": ["b", 3]}\n')
    labels = load_labels(path)
    assert labels == [Label("q1", frozenset({"a"})), Label("q2", frozenset({"b", "3"}))]

    def search(query: str, setting: Setting, k: int) -> list[str]:
        return ["a", "b"] if setting.mode == "lexical" else ["z", "a"]

    settings = default_settings()
    assert len(settings) == 12 and len({s.name for s in settings}) == 12
    results = evaluate(search, labels, settings, k=10)
    lexical = next(r for r in results if r.setting.mode == "lexical")
    dense = next(r for r in results if r.setting.mode == "dense")
    assert lexical.recall == 0.75 and lexical.mrr == pytest.approx(0.75)
    assert dense.recall == 0.5 and dense.queries == 2
    assert "recall@10" in format_table(results, 10)
    assert lexical.row()["setting"].startswith("lexical")
    for bad in ('{"query": ""}', "not json", '{"query": "q", "relevant": []}', ""):
        path.write_text(bad)
        with pytest.raises(InvalidInput):
            load_labels(path)


def test_grouped_hybrid_fuses_documents_across_chunks() -> None:
    """Dense finds doc a by one chunk, lexical by another: with RRF a gets credit from both lists
    and wins over b and c, each found by one list only (first there)."""
    from embedstack.registry.hybrid import _fused_documents

    owners = {1: ("a", 0), 2: ("a", 1), 3: ("b", 0), 4: ("c", 0)}
    dense = ([3, 1], [0.9, 0.8])
    lexical = ([4, 2], [9.0, 8.0])
    picks = _fused_documents(dense, lexical, owners, 3, Retrieval("hybrid", "rrf", 0.5, "max"))
    assert [owners[c][0] for c, _ in picks] == ["a", "b", "c"]  # 2/62 > 1/61
    assert picks[0][0] == 1  # dense ranked a 2nd, lexical 2nd too: dense's chunk
    # blend: min-max puts a at 0 in both lists (last in each), b and c at 1 in one
    picks = _fused_documents(dense, lexical, owners, 3, Retrieval("hybrid", "blend", 0.5, "max"))
    assert owners[picks[2][0]][0] == "a"
