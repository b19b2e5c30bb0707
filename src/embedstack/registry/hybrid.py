"""Query modes over one embedding space of a collection: dense (the vector index), lexical (FTS5
bm25 over the same space's chunk text, storage/lexical.py) and hybrid (both, fused by rank or
by normalized score: fusion.py), with document scoring for `group_by` (scoring.py).

`Retrieval` is what a query asks for; `resolve` fills what it leaves out from the collection's
`search` settings, then from the server defaults below, which are the measured best
(bench/hybrid.py, README "Search modes"): hybrid / blend / 0.5 / first_prior was the one setting
with recall@10 >= 0.99 on every dev half of the known-item sets; on the test halves it beat
dense by +10.0 (titles), +8.0 (identifiers) and +0.6 (GCIDE, dense at 0.994) points at
0.99-1.37x dense's p50. A collection's own `search` settings override it (the dev halves chose
alpha 0.3 for the pydoc collection, rrf 0.7 for GCIDE: higher MRR at equal recall).

Synchronous, like search.py: the server runs it on its search pool.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from embedstack.errors import InvalidInput
from embedstack.registry.fusion import FUSIONS, fuse
from embedstack.registry.indexes import IndexManager
from embedstack.registry.scoring import DOC_SCORINGS, ChunkScore, score_documents
from embedstack.registry.search import search_space
from embedstack.storage.lexical import LexicalStats
from embedstack.storage.store import HitRow, Store

MODES: tuple[str, ...] = ("dense", "lexical", "hybrid")
DEFAULT_MODE = "hybrid"
DEFAULT_FUSION = "blend"
DEFAULT_ALPHA = 0.5
DEFAULT_DOC_SCORING = "first_prior"
ROUNDS = 3
MAX_DEPTH = 16_384  # candidates one list may contribute, whatever k and grouping ask
MAX_LEXICAL_FIELDS = 16


@dataclass(frozen=True)
class Retrieval:
    mode: str = DEFAULT_MODE
    fusion: str = DEFAULT_FUSION
    alpha: float = DEFAULT_ALPHA
    doc_scoring: str = DEFAULT_DOC_SCORING

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


SETTING_KEYS = ("mode", "fusion", "alpha", "doc_scoring")


def check_settings(settings: dict[str, Any] | None) -> dict[str, Any]:
    """A collection's `search` settings (any subset of mode, fusion, alpha, doc_scoring), checked;
    InvalidInput names the fix."""
    out = dict(settings or {})
    unknown = sorted(set(out) - set(SETTING_KEYS))
    if unknown:
        raise InvalidInput(
            f"unknown search setting(s) {', '.join(unknown)}; valid: {', '.join(SETTING_KEYS)}"
        )
    for key, allowed in (("mode", MODES), ("fusion", FUSIONS), ("doc_scoring", DOC_SCORINGS)):
        if key in out and out[key] not in allowed:
            raise InvalidInput(f"search {key} {out[key]!r} is unknown; use one of {allowed}")
    if "alpha" in out:
        alpha = out["alpha"]
        if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
            raise InvalidInput(f"search alpha must be a number in [0, 1], got {alpha!r}")
        out["alpha"] = float(alpha)
    return out


def collection_settings(
    search: dict[str, Any], has_model: bool, lexical: bool = True
) -> dict[str, Any]:
    """A collection's settings as queries see them: a collection without a model (bring-your-own
    vectors) or without a lexical index defaults to dense (it cannot embed query text, or has
    no words to search)."""
    if (has_model and lexical) or "mode" in search:
        return dict(search)
    return {**search, "mode": "dense"}


def require_lexical(mode: str, lexical: bool, collection: str) -> None:
    """InvalidInput naming the fix when `mode` needs the lexical index a collection lacks."""
    if mode != "dense" and not lexical:
        raise InvalidInput(
            f'collection {collection!r} was created with "lexical": false, so it has no '
            f'lexical index for mode {mode!r}: query with "mode": "dense", or recreate the '
            'collection without "lexical": false (the default is on) and ingest again'
        )


def check_lexical_fields(fields: Any) -> tuple[str, ...]:
    """A collection's `lexical_fields` (metadata keys indexed as the title column), checked."""
    if not isinstance(fields, list | tuple) or len(fields) > MAX_LEXICAL_FIELDS:
        raise InvalidInput(
            f"'lexical_fields' must be a list of at most {MAX_LEXICAL_FIELDS} metadata keys"
        )
    for key in fields:
        if not isinstance(key, str) or not 1 <= len(key) <= 64:
            raise InvalidInput(f"lexical field {key!r} must be a metadata key of 1-64 characters")
    return tuple(dict.fromkeys(fields))


def resolve(request: dict[str, Any], collection: dict[str, Any] | None) -> Retrieval:
    """The query's own choices, else the collection's settings, else the server defaults."""
    merged = {**check_settings(collection), **{k: v for k, v in request.items() if v is not None}}
    return Retrieval(**check_settings(merged))


def search(
    store: Store,
    indexes: IndexManager,
    collection: str,
    space_id: str,
    vec: np.ndarray | None,
    text: str | None,
    k: int,
    flt: dict[str, Any] | None,
    group: bool,
    how: Retrieval,
    lexical_first: tuple[list[int], list[float]] | None = None,
    knobs: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Best-first hits in `how.mode`; with `group`, the top-k documents by `how.doc_scoring`.

    `lexical_first`, when given, is `lexical_candidates(...)` already run (the server runs it
    while the query is being embedded); `knobs` are the index's per-query search parameters."""
    if how.mode == "dense" and (not group or how.doc_scoring == "max"):
        assert vec is not None
        return search_space(store, indexes, collection, space_id, vec, k, flt, group, knobs)
    check_inputs(how, vec, text)
    source = StoreCandidates(
        store, indexes, collection, space_id, vec, text, flt, how.mode, lexical_first, knobs
    )
    l2 = indexes.get(collection, space_id).config.metric == "l2"
    return fused_search(source, k, group, how, l2)


def check_inputs(how: Retrieval, vec: np.ndarray | None, text: str | None) -> None:
    """InvalidInput when a query lacks what its mode searches with."""
    if how.mode != "dense" and not (text and text.strip()):
        raise InvalidInput(f"mode {how.mode!r} needs 'text' to search for")
    if how.mode != "lexical" and vec is None:
        raise InvalidInput(f"mode {how.mode!r} needs a query vector or text to embed")


Ranked = tuple[list[Any], list[float]]  # (chunk refs, scores), best first, higher is better


class Candidates(Protocol):
    """Where fused_search takes its candidates from: one store (StoreCandidates) or every shard
    of a cluster collection (cluster/router.py), whose chunk refs are (shard, chunk id)."""

    def lists(self, depth: int, round_: int) -> tuple[Ranked, Ranked]:
        """The top `depth` dense and lexical candidates (an empty list for a mode not asked)."""
        ...

    def owners(self, refs: list[Any]) -> dict[Any, tuple[str, int]]:
        """(document id, ordinal) of the chunks that still exist among `refs`."""
        ...

    def hydrate(self, refs: list[Any]) -> dict[Any, HitRow]:
        """Text and metadata of the chunks that still exist among `refs`."""
        ...


@dataclass
class StoreCandidates:
    """Candidates of one store's space: the vector index and the store's lexical index
    (scored with `lexical_total`, when given, as if the store held the whole collection)."""

    store: Store
    indexes: IndexManager
    collection: str
    space_id: str
    vec: np.ndarray | None
    text: str | None
    flt: dict[str, Any] | None
    mode: str
    lexical_first: tuple[list[int], list[float]] | None = None
    knobs: dict[str, int] | None = None
    lexical_total: LexicalStats | None = None

    def lists(self, depth: int, round_: int) -> tuple[Ranked, Ranked]:
        dense: Ranked = ([], [])
        lexical: Ranked = ([], [])
        if self.mode != "lexical":
            assert self.vec is not None
            scores, ids = self.indexes.search(
                self.collection, self.space_id, self.vec[None, :], depth, None, self.knobs, self.flt
            )
            keep = ids[0] >= 0
            found = scores[0][keep]
            l2 = self.indexes.get(self.collection, self.space_id).config.metric == "l2"
            dense = (ids[0][keep].tolist(), (-found if l2 else found).tolist())
        if self.mode != "dense":
            assert self.text is not None
            if round_ == 0 and self.lexical_first is not None:
                lexical = self.lexical_first
            else:
                lexical = self.store.lexical_search(
                    self.collection, self.space_id, self.text, depth, self.flt, self.lexical_total
                )
        return dense, lexical

    def owners(self, refs: list[Any]) -> dict[Any, tuple[str, int]]:
        return dict(self.store.chunk_owners(refs))

    def hydrate(self, refs: list[Any]) -> dict[Any, HitRow]:
        hydrating = time.perf_counter()
        rows = self.store.hydrate(refs)  # text and metadata of the k shown only
        self.indexes.observe_stage("hydrate", time.perf_counter() - hydrating)
        return dict(rows)


def fused_search(
    source: Candidates, k: int, group: bool, how: Retrieval, l2: bool
) -> list[dict[str, Any]]:
    """The top-k hits (documents with `group`) fused from `source`'s dense and lexical lists,
    going deeper (up to ROUNDS times) while grouping or filters leave fewer than k."""
    depth = candidate_depth(k, group)
    hits: list[dict[str, Any]] = []
    for round_ in range(ROUNDS):
        dense, lexical = source.lists(depth, round_)
        full = len(dense[0]) >= depth or len(lexical[0]) >= depth
        dense = _without_tail_ties(dense, depth)
        owners = source.owners(list(dict.fromkeys([*dense[0], *lexical[0]])))
        # equal scores in (document, ordinal) order: ranks (and so rrf) do not depend on which
        # store, or shard, a candidate came from
        dense, lexical = _ordered(dense, owners), _ordered(lexical, owners)
        if how.mode == "hybrid" and group:
            picks = _fused_documents(dense, lexical, owners, k, how)
        else:
            if how.mode == "dense":
                fused = dict(zip(*dense, strict=True))
            elif how.mode == "lexical":
                fused = dict(zip(*lexical, strict=True))
            else:
                fused = fuse(how.fusion, dense, lexical, how.alpha)
            ranked = sorted(fused.items(), key=lambda t: (-t[1], owners.get(t[0], _NOBODY)))
            picks = _picks(ranked, owners, k, group, how.doc_scoring)
        rows = source.hydrate([i for i, _ in picks])
        hits = [_hit(rows[i], score) for i, score in picks if i in rows]
        if how.mode == "dense" and l2:
            for hit in hits:
                hit["score"] = -hit["score"]  # back to a distance, as dense l2 reports
        if len(hits) >= k or not full or depth >= MAX_DEPTH:
            break
        depth = min(depth * 4, MAX_DEPTH)
    return hits


_NOBODY = ("", -1)  # the owner of a chunk deleted meanwhile (it is dropped from the hits)


def _without_tail_ties(ranked: Ranked, depth: int) -> Ranked:
    """A full dense list without the candidates that tie its last score: which of several
    equal scores at the cut a vector index returns is its own (insertion-order) choice, so they
    are left out alike on every store and shard. (Lexical lists order ties themselves.)"""
    ids, scores = ranked
    if len(ids) < depth:
        return ranked
    keep = len(scores)
    while keep and scores[keep - 1] == scores[-1]:
        keep -= 1
    return ids[:keep], scores[:keep]


def _ordered(ranked: Ranked, owners: dict[Any, tuple[str, int]]) -> Ranked:
    """A candidate list best first, equal scores in (document id, ordinal) order."""
    pairs = sorted(zip(*ranked, strict=True), key=lambda t: (-t[1], owners.get(t[0], _NOBODY)))
    return [i for i, _ in pairs], [s for _, s in pairs]


def candidate_depth(k: int, group: bool) -> int:
    """Candidates each list contributes (more when documents group several chunks)."""
    return min(MAX_DEPTH, max(8 * k, 80) if group else max(4 * k, 40))


def lexical_candidates(
    store: Store, collection: str, space_id: str, text: str, k: int, flt: dict[str, Any] | None,
    group: bool,
) -> tuple[list[int], list[float]]:  # fmt: skip
    """The lexical list `search` starts from, for running ahead of the query embedding."""
    return store.lexical_search(collection, space_id, text, candidate_depth(k, group), flt)


def _fused_documents(
    dense: Ranked,
    lexical: Ranked,
    owners: dict[Any, tuple[str, int]],
    k: int,
    how: Retrieval,
) -> list[tuple[Any, float]]:
    """Hybrid with grouping fuses documents, not chunks: each list becomes a document ranking
    by `how.doc_scoring`, and those are fused, so a document found by dense in one chunk and by
    lexical in another gets credit from both."""
    ranked: list[tuple[list[str], list[float], dict[str, ChunkScore]]] = []
    for ids, scores in (dense, lexical):
        chunks = [
            ChunkScore(i, *owners[i], s) for i, s in zip(ids, scores, strict=True) if i in owners
        ]
        docs = score_documents(chunks, how.doc_scoring)
        ranked.append(
            (
                [d.document_id for d in docs],
                [d.score for d in docs],
                {d.document_id: d.best for d in docs},
            )
        )
    (d_ids, d_scores, d_best), (l_ids, l_scores, l_best) = ranked
    fused = fuse(how.fusion, (d_ids, d_scores), (l_ids, l_scores), how.alpha)
    d_rank = {doc: r for r, doc in enumerate(d_ids)}
    l_rank = {doc: r for r, doc in enumerate(l_ids)}
    out = []
    for doc, score in sorted(fused.items(), key=lambda t: (-t[1], t[0]))[:k]:
        # show the chunk of the list that ranked the document higher
        lexical_wins = doc not in d_best or l_rank.get(doc, 1 << 30) < d_rank[doc]
        out.append(((l_best if lexical_wins else d_best)[doc].chunk_id, score))
    return out


def _hit(row: HitRow, score: float) -> dict[str, Any]:
    return {
        "document_id": row.document_id,
        "chunk_id": f"{row.document_id}#{row.ordinal}",
        "score": score,
        "text": row.text,
        "metadata": row.metadata,
    }


def _picks(
    ranked: list[tuple[Any, float]],
    owners: dict[Any, tuple[str, int]],
    k: int,
    group: bool,
    scoring: str,
) -> list[tuple[Any, float]]:
    """(chunk id, score) of the k hits: chunks, or each document's best chunk by `scoring`."""
    chunks = [ChunkScore(i, *owners[i], s) for i, s in ranked if i in owners]
    if group:
        picked = [(d.best, d.score) for d in score_documents(chunks, scoring)[:k]]
    else:
        picked = [(c, c.score) for c in chunks[:k]]
    return [(chunk.chunk_id, score) for chunk, score in picked]
