"""Live labels: each answered query is remembered (bounded, in memory) under its query_id with the
ranked document ids it returned; feedback (a click, or a relevance grade) on one of them marks
the query. Click-through@k and the MRR of the first clicked hit are computed over the
remembered queries of each (collection, space).

Memory only, by choice: `max_queries` entries (oldest forgotten first) of a few ids each; a
restart forgets them, and feedback on a forgotten query_id is refused (404) so the caller knows.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from embedstack.errors import InvalidInput, NotFound

Key = tuple[str, str]  # (collection, space id)


@dataclass
class _Query:
    key: Key
    documents: list[str]  # ranked, as answered
    first_click: int | None = None  # 1-based rank of the best-ranked clicked hit
    grades: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class FeedbackStats:
    queries: int
    clicked: int
    click_through: float
    clicked_mrr: float | None
    graded: int

    def as_dict(self) -> dict[str, Any]:
        mrr = None if self.clicked_mrr is None else round(self.clicked_mrr, 4)
        return {"queries": self.queries, "clicked": self.clicked,
                "click_through": round(self.click_through, 4), "clicked_mrr": mrr,
                "graded": self.graded}  # fmt: skip


@dataclass
class _Totals:
    queries: int = 0
    clicked: int = 0
    within_k: int = 0
    reciprocal: float = 0.0
    graded: int = 0


class FeedbackLog:
    """Remembered queries and per-(collection, space) totals kept current as queries are
    remembered, marked and forgotten, so reading the rates costs O(1)."""

    def __init__(self, max_queries: int = 100_000, k: int = 10) -> None:
        self._max = max_queries
        self._k = k
        self._queries: OrderedDict[str, _Query] = OrderedDict()
        self._totals: dict[Key, _Totals] = {}
        self._lock = threading.Lock()

    def remember(self, collection: str, space_id: str, documents: list[str]) -> str:
        """A new query_id for an answered query."""
        query_id = uuid.uuid4().hex
        key = (collection, space_id)
        with self._lock:
            self._queries[query_id] = _Query(key, documents)
            totals = self._totals.get(key)
            if totals is None:
                totals = self._totals[key] = _Totals()
            totals.queries += 1
            while len(self._queries) > self._max:
                self._count(self._queries.popitem(last=False)[1], -1)
        return query_id

    def _count(self, query: _Query, sign: int) -> None:
        """Add (sign 1) or take away (sign -1) a query's marks from its totals."""
        totals = self._totals[query.key]
        if sign < 0:
            totals.queries -= 1
        if query.first_click is not None:
            totals.clicked += sign
            totals.within_k += sign * (query.first_click <= self._k)
            totals.reciprocal += sign / query.first_click
        totals.graded += sign * bool(query.grades)
        if totals.queries == 0:
            del self._totals[query.key]

    def record(
        self, query_id: str, document_id: str, kind: str, grade: int | None = None
    ) -> tuple[Key, int]:
        """Record a click (kind "click") or a relevance grade (kind "grade", 0 = not relevant)
        on `document_id` among the hits of `query_id`; returns the query's (collection, space)
        and the hit's 1-based rank."""
        if kind not in ("click", "grade"):
            raise InvalidInput(f"feedback kind {kind!r} is unknown; use 'click' or 'grade'")
        if kind == "grade" and grade is None:
            raise InvalidInput("feedback kind 'grade' needs 'grade' (0 = not relevant .. 3)")
        with self._lock:
            query = self._queries.get(query_id)
            if query is None:
                raise NotFound(
                    f"query_id {query_id!r} is unknown or forgotten (the server remembers the "
                    f"last {self._max} queries, in memory): send the query_id of a recent "
                    "query response"
                )
            if document_id not in query.documents:
                raise InvalidInput(
                    f"document {document_id!r} is not among the hits of query {query_id}: send "
                    "the document_id of one of its hits"
                )
            rank = query.documents.index(document_id) + 1
            positive = kind == "click" or (grade is not None and grade > 0)
            self._count(query, -1)
            self._totals.setdefault(query.key, _Totals()).queries += 1  # _count took it away
            if kind == "grade":
                assert grade is not None
                query.grades[document_id] = grade
            if positive and (query.first_click is None or rank < query.first_click):
                query.first_click = rank
            self._count(query, 1)
            return query.key, rank

    def owner(self, query_id: str) -> Key | None:
        """The (collection, space) a remembered query ran on; None when unknown or forgotten."""
        with self._lock:
            query = self._queries.get(query_id)
            return None if query is None else query.key

    def stats(self, key: Key) -> FeedbackStats:
        """Click-through@k (queries with a positive hit at rank <= k, over remembered queries)
        and the MRR of the first positive hit over the queries that have one."""
        with self._lock:
            t = self._totals.get(key, _Totals())
            ctr = t.within_k / t.queries if t.queries else 0.0
            mrr = t.reciprocal / t.clicked if t.clicked else None
            return FeedbackStats(t.queries, t.clicked, ctr, mrr, t.graded)

    def keys(self) -> set[Key]:
        with self._lock:
            return set(self._totals)
