"""Live labels: each answered query is remembered (bounded) under its query_id with the ranked
document ids it returned; feedback (a click, or a relevance grade) on one of them marks the
query. Click-through@k and the MRR of the first clicked hit are computed over the remembered
queries of each (collection, space).

Durable when given a `Durable` (storage/feedback.py): remembered queries are reloaded at start,
answered ones reach it in batches (`flush`, off the hot path), and a mark is committed there
before `record` returns, so acknowledged feedback survives a restart or a crash. Feedback on a
forgotten query_id (older than the last `max_queries`, or answered in the last flush interval
before a crash) is refused (404) so the caller knows.
"""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from embedstack.errors import InvalidInput, NotFound

Key = tuple[str, str]  # (collection, space id)


@dataclass
class QueryRow:
    """One remembered query: documents ranked as answered; first_click is the 1-based rank of
    the best-ranked positive hit."""

    query_id: str
    collection: str
    space_id: str
    documents: list[str]
    first_click: int | None = None
    grades: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> Key:
        return (self.collection, self.space_id)


class Durable(Protocol):
    """Where remembered queries and their marks are kept across restarts."""

    def load(self, limit: int) -> Iterator[QueryRow]: ...
    def append(self, rows: Iterable[QueryRow]) -> None: ...
    def mark(self, row: QueryRow) -> None: ...
    def trim(self, keep: int) -> int: ...
    def forget(self, collection: str) -> None: ...


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
class Totals:
    """The counts behind FeedbackStats over a set of remembered queries."""

    queries: int = 0
    clicked: int = 0
    within_k: int = 0
    reciprocal: float = 0.0
    graded: int = 0

    def add(self, query: QueryRow, sign: int, k: int) -> None:
        """Add (sign 1) or take away (sign -1) a query and its marks."""
        self.queries += sign
        if query.first_click is not None:
            self.clicked += sign
            self.within_k += sign * (query.first_click <= k)
            self.reciprocal += sign / query.first_click
        self.graded += sign * bool(query.grades)

    def stats(self) -> FeedbackStats:
        """Click-through@k (queries with a positive hit at rank <= k, over remembered queries)
        and the MRR of the first positive hit over the queries that have one."""
        ctr = self.within_k / self.queries if self.queries else 0.0
        mrr = self.reciprocal / self.clicked if self.clicked else None
        return FeedbackStats(self.queries, self.clicked, ctr, mrr, self.graded)


def check_mark(kind: str, grade: int | None) -> None:
    if kind not in ("click", "grade"):
        raise InvalidInput(f"feedback kind {kind!r} is unknown; use 'click' or 'grade'")
    if kind == "grade" and grade is None:
        raise InvalidInput("feedback kind 'grade' needs 'grade' (0 = not relevant .. 3)")


def marked(query: QueryRow, document_id: str, kind: str, grade: int | None) -> tuple[QueryRow, int]:
    """A copy of `query` with a click or grade on `document_id`, and the hit's 1-based rank;
    InvalidInput when the document is not among the query's hits."""
    if document_id not in query.documents:
        raise InvalidInput(
            f"document {document_id!r} is not among the hits of query {query.query_id}: "
            "send the document_id of one of its hits"
        )
    rank = query.documents.index(document_id) + 1
    out = replace(query, grades=dict(query.grades))
    if kind == "grade":
        assert grade is not None
        out.grades[document_id] = grade
    positive = kind == "click" or (grade is not None and grade > 0)
    if positive and (out.first_click is None or rank < out.first_click):
        out.first_click = rank
    return out, rank


class FeedbackLog:
    """Remembered queries and per-(collection, space) totals kept current as queries are
    remembered, marked and forgotten, so reading the rates costs O(1)."""

    def __init__(self, max_queries: int = 100_000, k: int = 10, durable: Durable | None = None):
        self._max = max_queries
        self._k = k
        self._durable = durable
        self._queries: OrderedDict[str, QueryRow] = OrderedDict()
        self._totals: dict[Key, Totals] = {}
        self._unflushed: list[QueryRow] = []
        self._lock = threading.Lock()  # the in-memory state
        self._marking = threading.Lock()  # marks, one at a time, in the order they are made
        if durable is not None:
            for row in durable.load(max_queries):
                self._add(row)

    def _add(self, row: QueryRow) -> None:
        self._queries[row.query_id] = row
        self._totals.setdefault(row.key, Totals())
        self._count(row, 1)
        while len(self._queries) > self._max:
            self._count(self._queries.popitem(last=False)[1], -1)

    def remember(self, collection: str, space_id: str, documents: list[str]) -> str:
        """A new query_id for an answered query."""
        row = QueryRow(uuid.uuid4().hex, collection, space_id, documents)
        with self._lock:
            self._add(row)
            if self._durable is not None:
                self._unflushed.append(row)
                if len(self._unflushed) > self._max:  # the durable side is failing: bounded
                    del self._unflushed[: len(self._unflushed) - self._max]
        return row.query_id

    def flush(self) -> None:
        """Hand the queries answered since the last flush to the durable side (a background
        thread calls this every few seconds, and at stop)."""
        if self._durable is None:
            return
        with self._lock:
            rows, self._unflushed = self._unflushed, []
        if rows:
            self._durable.append(rows)
            self._durable.trim(self._max)

    def _count(self, query: QueryRow, sign: int) -> None:
        """Add (sign 1) or take away (sign -1) a query and its marks from its totals."""
        totals = self._totals[query.key]
        totals.add(query, sign, self._k)
        if totals.queries == 0:
            del self._totals[query.key]

    def record(
        self, query_id: str, document_id: str, kind: str, grade: int | None = None
    ) -> tuple[Key, int]:
        """Record a click (kind "click") or a relevance grade (kind "grade", 0 = not relevant)
        on `document_id` among the hits of `query_id`; returns the query's (collection, space)
        and the hit's 1-based rank. With a durable side, the mark is committed there first."""
        check_mark(kind, grade)
        with self._marking:
            with self._lock:
                query = self._queries.get(query_id)
                if query is None:
                    raise NotFound(
                        f"query_id {query_id!r} is unknown or forgotten (the server remembers "
                        f"the last {self._max} queries): send the query_id of a recent query "
                        "response"
                    )
                mark, rank = marked(query, document_id, kind, grade)
            if self._durable is not None:
                self._durable.mark(mark)  # committed before anything is acknowledged
            with self._lock:
                if self._queries.get(query_id) is query:  # not forgotten meanwhile
                    self._count(query, -1)
                    self._totals.setdefault(query.key, Totals())
                    query.first_click, query.grades = mark.first_click, mark.grades
                    self._count(query, 1)
            return query.key, rank

    def forget(self, collection: str) -> None:
        """Forget every query of a (deleted) collection, here and on the durable side."""
        with self._lock:
            for qid in [q for q, row in self._queries.items() if row.collection == collection]:
                self._count(self._queries.pop(qid), -1)
            self._unflushed = [r for r in self._unflushed if r.collection != collection]
        if self._durable is not None:
            self._durable.forget(collection)

    def owner(self, query_id: str) -> Key | None:
        """The (collection, space) a remembered query ran on; None when unknown or forgotten."""
        with self._lock:
            query = self._queries.get(query_id)
            return None if query is None else query.key

    def stats(self, key: Key) -> FeedbackStats:
        """Totals.stats of the remembered queries of one (collection, space)."""
        with self._lock:
            return self._totals.get(key, Totals()).stats()

    def keys(self) -> set[Key]:
        with self._lock:
            return set(self._totals)
