"""k-NN in one embedding space of a collection: filter, search, over-fetch for grouping, hydrate.

Synchronous (FAISS and SQLite release the GIL): the server runs it on its search pool.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from embedstack.registry.indexes import IndexManager
from embedstack.storage.store import HitRow, Store

FETCH_ROUNDS = 6
MAX_FETCH = 16_384  # candidates one query may fetch and hydrate, whatever k and grouping ask


def search_space(
    store: Store,
    indexes: IndexManager,
    collection: str,
    space_id: str,
    vec: np.ndarray,
    k: int,
    flt: dict[str, Any] | None = None,
    group: bool = False,
    knobs: dict[str, int] | None = None,
) -> list[dict[str, Any]]:
    """Best-first hits; with `group`, the best chunk of each of the top-k documents; `knobs`
    are per-query search parameters of the index (e.g. ef_search)."""
    cap = max(k, MAX_FETCH)
    fetch = min(k * 4, cap) if group else k
    hits: list[dict[str, Any]] = []
    rows: dict[int, HitRow] = {}
    metadata: dict[tuple[str, str], Any] = {}  # each document's metadata parsed once per query
    for _ in range(FETCH_ROUNDS):
        scores, ids = indexes.search(collection, space_id, vec[None, :], fetch, None, knobs, flt)
        keep = ids[0] >= 0
        found_scores, found_ids = scores[0][keep], ids[0][keep]
        hydrating = time.perf_counter()
        rows.update(store.hydrate([i for i in found_ids.tolist() if i not in rows], metadata))
        indexes.observe_stage("hydrate", time.perf_counter() - hydrating)
        hits = _hits(found_scores, found_ids, rows, k, group)
        if len(hits) >= k or len(found_ids) < fetch or fetch >= cap:
            break
        fetch = min(fetch * 4, cap)  # grouping or a concurrent delete left us short: go deeper
    return hits


def _hits(
    scores: np.ndarray, ids: np.ndarray, rows: dict[int, HitRow], k: int, group: bool
) -> list[dict[str, Any]]:
    hits: list[dict[str, Any]] = []
    seen: set[str] = set()
    for score, chunk_id in zip(scores.tolist(), ids.tolist(), strict=True):
        row = rows.get(chunk_id)
        if row is None:  # deleted between search and hydrate
            continue
        if group:
            if row.document_id in seen:
                continue
            seen.add(row.document_id)
        hits.append(
            {
                "document_id": row.document_id,
                "chunk_id": f"{row.document_id}#{row.ordinal}",
                "score": score,
                "text": row.text,
                "metadata": row.metadata,
            }
        )
        if len(hits) == k:
            break
    return hits
