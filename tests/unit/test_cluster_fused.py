"""Fused queries over shards (hybrid, lexical, dense with a document scoring) equal the same
query on one store holding everything: bm25 scored with the shards' summed statistics
(storage/lexical.py) and the single-node fusion over every shard's candidates (cluster/fused.py),
on real shard replicas (store, FTS5, exact index, hashing model) without Ray or a broker."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.fused import ShardCandidates, total_stats
from embedstack.cluster.log import LogRecord
from embedstack.cluster.replica import ShardReplica
from embedstack.cluster.shards import shard_of
from embedstack.config import Settings
from embedstack.ingest.chunking import content_hash
from embedstack.registry import hybrid
from embedstack.registry.collections import CollectionConfigs
from embedstack.registry.hybrid import Retrieval, fused_search
from embedstack.serving.services import build_models
from embedstack.storage.lexical import LexicalStats
from embedstack.storage.store import DocumentRow
from tests.conftest import DATA, load_jsonl

pytestmark = pytest.mark.usefixtures("single_omp_thread")

SHARDS = 3
CORPUS = load_jsonl(DATA / "pydoc_sections.jsonl")[:150]
QUERIES = [
    "how do I open a file for reading",
    "error handling",  # also a title
    "the of and",  # stop words only
    "lambda expressions",
    "string methods split join",
    "__init__ self",
    "zzznotaword",
]


@dataclass
class Split:
    one: ShardReplica  # the whole corpus in one store (as a single node holds it)
    shards: list[ShardReplica]
    space: str
    vec: Any  # text -> query vector

    def scatter(self, method: str, *args: Any) -> list[Any]:
        return [getattr(s, method)(*args) for s in self.shards]


def _replica(root: Path, coll: ClusterCollection, shard: int, models: Any) -> ShardReplica:
    return ShardReplica(root / f"{coll.shards}-{shard}", coll, shard, models)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Split]:
    root = tmp_path_factory.mktemp("fused")
    settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=root)
    models = build_models(settings, {})
    config, space = CollectionConfigs(models, "hashing-test").config_for(
        "docs", index={"type": "exact"}, chunking={"size": 64}
    )
    rows = [
        DocumentRow(str(r["id"]), str(r["text"]), dict(r["metadata"]),  # type: ignore[arg-type]
                    content_hash(str(r["text"]), dict(r["metadata"])))  # type: ignore[arg-type]
        for r in CORPUS
    ]  # fmt: skip
    whole = ClusterCollection("docs", config, space, time.time(), "t1", 1, 1)
    parts = ClusterCollection("docs", config, space, time.time(), "t3", SHARDS, 1)
    one = _replica(root, whole, 0, models)
    one.apply([(0, LogRecord("put", tuple(rows)).encode())])
    shards = [_replica(root, parts, s, models) for s in range(SHARDS)]
    for s, replica in enumerate(shards):
        mine = tuple(r for r in rows if shard_of(r.id, SHARDS) == s)
        assert mine, "every shard holds documents"
        replica.apply([(0, LogRecord("put", mine).encode())])
    embedder = models.get("hashing-test")

    def vec(text: str) -> Any:
        return np.asarray(embedder.embed_batch([text])[0], np.float32)

    yield Split(one, shards, space, vec)
    for r in [one, *shards]:
        r.close()


def _same(got: list[tuple[str, float]], want: list[tuple[str, float]]) -> None:
    """Equal lists of (chunk, score), up to float rounding and the order of equal scores."""
    assert len(got) == len(want)
    for (_, a), (_, b) in zip(got, want, strict=True):
        assert abs(a - b) <= 1e-9 * max(1.0, abs(b)), (got, want)
    key = lambda xs: sorted((round(s, 9), c) for c, s in xs)  # noqa: E731
    assert [c for c, _ in got] == [c for c, _ in want] or key(got) == key(want)


def _named(replica: ShardReplica, ids: list[int], scores: list[float]) -> list[tuple[str, float]]:
    owners = replica._store.chunk_owners(ids)
    return [(f"{owners[i][0]}#{owners[i][1]}", s) for i, s in zip(ids, scores, strict=True)]


def test_bm25_stats_add_up_and_rescore_exactly(split: Split) -> None:
    for q in QUERIES:
        parts = [s._store.lexical_stats(q) for s in split.shards]
        total = parts[0] + parts[1] + parts[2]
        assert total == split.one._store.lexical_stats(q)  # rows, tokens, hits all add up
        want = _named(split.one, *split.one._store.lexical_search("docs", split.space, q, 30))
        # one store rescored with its own statistics: the per-phrase inversion is exact
        own = split.one._store.lexical_search("docs", split.space, q, 30, total=total)
        _same(_named(split.one, *own), want)
        # every shard scored with the summed statistics: the union's top 30 is one store's
        merged: list[tuple[str, float]] = []
        for s in split.shards:
            merged += _named(s, *s._store.lexical_search("docs", split.space, q, 30, total=total))
        merged.sort(key=lambda t: t[1], reverse=True)
        _same(merged[:30], want)
        if q != "zzznotaword":
            assert want, q
    with pytest.raises(ValueError):
        _ = LexicalStats(1, 1, (1,)) + LexicalStats(1, 1, ())


def test_fused_queries_over_shards_equal_one_store(split: Split) -> None:
    flt = {"file": "library/stdtypes.rst.txt"}
    cases = [
        (Retrieval("hybrid", "blend", 0.5, "first_prior"), None, False),
        (Retrieval("hybrid", "rrf", 0.7, "max"), None, False),
        (Retrieval("hybrid", "blend", 0.3, "first_prior"), None, True),
        (Retrieval("hybrid", "rrf", 0.5, "max_sum"), flt, True),
        (Retrieval("lexical", "blend", 0.5, "max"), flt, False),
        (Retrieval("lexical", "blend", 0.5, "first_prior"), None, True),
        (Retrieval("dense", "blend", 0.5, "first_prior"), None, True),
    ]
    checked = 0
    for how, f, group in cases:
        for q in QUERIES[:6]:
            vec = split.vec(q) if how.mode != "lexical" else None
            want = hybrid.search(
                split.one._store, split.one._indexes, "docs", split.space, vec, q, 10, f, group, how
            )
            total = total_stats(split.scatter, q) if how.mode != "dense" else None
            source = ShardCandidates(split.scatter, split.space, vec, q, f, how.mode, total)
            got = fused_search(source, 10, group, how, False)
            _same(
                [(h["chunk_id"], h["score"]) for h in got],
                [(h["chunk_id"], h["score"]) for h in want],
            )
            assert {h["chunk_id"]: h["text"] for h in got} == {
                h["chunk_id"]: h["text"] for h in want
            }
            if f:
                assert all(h["metadata"]["file"] == f["file"] for h in got)
            if group:
                assert len({h["document_id"] for h in got}) == len(got)
            checked += bool(want)
    assert checked > 30
