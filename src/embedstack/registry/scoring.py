"""Document scores from chunk scores, for `group_by: "document"`.

- `max`: the best chunk's score (what grouping always did).
- `max_sum`: the best chunk plus a decayed sum of the next best ones,
  s1 + W (s2 + D s3 + D^2 s4), negative scores counting as 0 in the sum: a document that
  matches in several places beats one that matches once, a little.
- `first_prior`: each chunk's score, raised by P |s| for the document's first chunk (ordinal 0),
  then the max: titles, summaries and definitions sit at the start of a document.

Scores must be higher-is-better (dense l2 distances arrive negated). The default (hybrid.py) is
the one the offline evaluation (bench/hybrid.py) measured best: first_prior; max_sum lost on
every set.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from dataclasses import dataclass

DOC_SCORINGS: tuple[str, ...] = ("max", "max_sum", "first_prior")
SUM_WEIGHT = 0.3  # W
SUM_DECAY = 0.5  # D
SUM_EXTRA = 3  # chunks after the best that count
FIRST_PRIOR = 0.1  # P


@dataclass(frozen=True)
class ChunkScore:
    chunk_id: Hashable  # a store's chunk id; (shard, chunk id) across a cluster's shards
    document_id: str
    ordinal: int
    score: float


@dataclass(frozen=True)
class DocScore:
    document_id: str
    score: float
    best: ChunkScore  # the chunk shown as the document's hit


def score_documents(chunks: Iterable[ChunkScore], method: str = "max") -> list[DocScore]:
    """Documents best first (ties keep the order of their best chunk)."""
    by_doc: dict[str, list[ChunkScore]] = {}
    for ch in chunks:
        by_doc.setdefault(ch.document_id, []).append(ch)
    out: list[DocScore] = []
    for doc_id, group in by_doc.items():
        if method == "first_prior":
            lifted = [
                (c.score + FIRST_PRIOR * abs(c.score) if c.ordinal == 0 else c.score, c)
                for c in group
            ]
            score, best = max(lifted, key=lambda t: t[0])
            out.append(DocScore(doc_id, score, best))
            continue
        ranked = sorted(group, key=lambda c: c.score, reverse=True)
        score = ranked[0].score
        if method == "max_sum":
            tail = ranked[1 : 1 + SUM_EXTRA]
            score += SUM_WEIGHT * sum(max(0.0, c.score) * SUM_DECAY**i for i, c in enumerate(tail))
        out.append(DocScore(doc_id, score, ranked[0]))
    out.sort(key=lambda d: d.score, reverse=True)  # stable: insertion order breaks ties
    return out
