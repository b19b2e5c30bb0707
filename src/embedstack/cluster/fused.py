"""Fused queries over a cluster collection: hybrid, lexical, and dense queries whose documents are
scored from several chunks (`doc_scoring` other than max), run exactly as on single node.

The single-node code does the fusing (registry/hybrid.py `fused_search`); this module gives it
the candidates of every shard instead of one store's:
- lexical scores are comparable across shards only with one set of bm25 statistics, so a query
  first gathers every shard's (storage/lexical.py LexicalStats) and sends their sum back with
  the search: each chunk scores as in one store holding the whole collection;
- each shard returns its top `depth` dense and lexical candidates (and their rows); the global
  top `depth` of each list is then the top `depth` of the union, the very lists a single store
  would fuse. Chunk refs are (shard, chunk id): chunk ids are per store.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from embedstack.registry.hybrid import Ranked
from embedstack.storage.lexical import LexicalStats
from embedstack.storage.store import HitRow

# (method of the shard node actor, its arguments after (collection, shard)) -> each shard's answer
Scatter = Callable[..., list[Any]]


def total_stats(scatter: Scatter, text: str) -> LexicalStats:
    """The collection's bm25 statistics for `text`: the sum of one replica per shard."""
    parts: list[LexicalStats] = scatter("lexical_stats", text)
    total = parts[0]
    for part in parts[1:]:
        total = total + part
    return total


class ShardCandidates:
    """registry/hybrid.py Candidates over every shard of a cluster collection."""

    def __init__(
        self, scatter: Scatter, space_id: str, vec: np.ndarray | None, text: str | None,
        flt: dict[str, Any] | None, mode: str, total: LexicalStats | None,
        knobs: dict[str, int] | None = None,
    ) -> None:  # fmt: skip
        self._scatter = scatter
        self._args = (space_id, vec, text)
        self._flt, self._mode, self._total, self._knobs = flt, mode, total, knobs
        self._rows: dict[tuple[int, int], HitRow] = {}

    def lists(self, depth: int, round_: int) -> tuple[Ranked, Ranked]:
        parts = self._scatter(
            "candidates", *self._args, depth, self._flt, self._mode, self._total, self._knobs
        )
        self._rows = {}  # a round may be answered by other replicas, with other chunk ids
        dense: list[tuple[tuple[int, int], float]] = []
        lexical: list[tuple[tuple[int, int], float]] = []
        for shard, part in enumerate(parts):
            for out, (ids, scores) in ((dense, part["dense"]), (lexical, part["lexical"])):
                out += [((shard, i), s) for i, s in zip(ids, scores, strict=True)]
            self._rows.update({(shard, i): row for i, row in part["rows"].items()})
        return self._top(dense, depth), self._top(lexical, depth)

    def _top(self, found: list[tuple[tuple[int, int], float]], depth: int) -> Ranked:
        """The best `depth` of every shard's candidates (equal scores in (document, ordinal)
        order, as each store cuts its own list)."""
        owners = self.owners([r for r, _ in found])
        found.sort(key=lambda t: (-t[1], owners.get(t[0], ("", -1))))
        best = found[:depth]
        return [r for r, _ in best], [s for _, s in best]

    def owners(self, refs: list[Any]) -> dict[Any, tuple[str, int]]:
        rows = self._rows
        return {r: (rows[r].document_id, rows[r].ordinal) for r in refs if r in rows}

    def hydrate(self, refs: list[Any]) -> dict[Any, HitRow]:
        return {r: self._rows[r] for r in refs if r in self._rows}
