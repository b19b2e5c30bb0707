"""Fusing ranked lists of chunk ids: reciprocal rank fusion and a normalized score blend.

Each list is (ids, scores), best first, scores higher-is-better. `alpha` weighs the first list
(dense) against the second (lexical): 0.5 is plain RRF / an even blend, 1.0 dense only, 0.0
lexical only. Pure functions over Python lists: no numpy, no I/O.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import TypeVar

RRF_K = 60
FUSIONS: tuple[str, ...] = ("rrf", "blend")

Id = TypeVar("Id", bound=Hashable)  # chunk ids (int) or document ids (str)
Ranked = tuple[Sequence[Id], Sequence[float]]


def rrf(
    dense: Ranked[Id], lexical: Ranked[Id], alpha: float = 0.5, k: int = RRF_K
) -> dict[Id, float]:
    """score(id) = 2 alpha / (k + rank_dense) + 2 (1 - alpha) / (k + rank_lexical), ranks from 1;
    an id absent from a list gets nothing from it (Cormack et al. 2009, weighted)."""
    out: dict[Id, float] = {}
    for weight, (ids, _) in ((2 * alpha, dense), (2 * (1 - alpha), lexical)):
        if weight <= 0:
            continue
        for rank, chunk_id in enumerate(ids, start=1):
            out[chunk_id] = out.get(chunk_id, 0.0) + weight / (k + rank)
    return out


def min_max(scores: Sequence[float]) -> list[float]:
    """Scores mapped onto [0, 1] (best 1, worst of the list 0); all equal -> all 1."""
    if not scores:
        return []
    low, high = min(scores), max(scores)
    if high - low <= 1e-12:
        return [1.0] * len(scores)
    return [(s - low) / (high - low) for s in scores]


def blend(dense: Ranked[Id], lexical: Ranked[Id], alpha: float = 0.5) -> dict[Id, float]:
    """score(id) = alpha norm_dense + (1 - alpha) norm_lexical, each min-max normalized over its
    own candidate list; an id absent from a list scores 0 there."""
    out: dict[Id, float] = {}
    for weight, (ids, scores) in ((alpha, dense), (1 - alpha, lexical)):
        for chunk_id, s in zip(ids, min_max(list(scores)), strict=True):
            out[chunk_id] = out.get(chunk_id, 0.0) + weight * s
    return out


def fuse(method: str, dense: Ranked[Id], lexical: Ranked[Id], alpha: float) -> dict[Id, float]:
    if method == "blend":
        return blend(dense, lexical, alpha)
    return rrf(dense, lexical, alpha)
