"""The durable half of live labels (obs/feedback.py): answered queries and their marks.

One SQLite file, `feedback.db` beside the store, one row per remembered query: its id, the
(collection, space) it ran on, the ranked document ids it answered and its marks (the rank of the
best clicked hit, relevance grades). Two kinds of writes:

- answered queries are appended in batches off the hot path (`append`), so a kill -9 forgets at
  most the queries of the last flush interval: a click on one of those is refused with 404, as for
  any query the server no longer remembers;
- a mark (`mark`) is written and committed before POST /v1/feedback answers: acknowledged
  feedback survives any crash.

`keep` rows at most: `trim` drops the oldest. A file SQLite cannot read does not stop the server:
it is moved aside (`feedback.db.broken-<time>`) and a fresh one started, with a log line.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from embedstack.obs.feedback import QueryRow

log = logging.getLogger(__name__)

FEEDBACK = "feedback.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS queries (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    query_id TEXT NOT NULL UNIQUE,
    collection TEXT NOT NULL,
    space_id TEXT NOT NULL,
    documents BLOB NOT NULL,
    first_click INTEGER,
    grades BLOB
);
CREATE INDEX IF NOT EXISTS queries_collection ON queries (collection);
"""


class FeedbackStore:
    """The obs.feedback.Durable of a server: one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._conn = self._open()
        except sqlite3.DatabaseError as exc:
            aside = self.path.with_name(f"{self.path.name}.broken-{int(time.time())}")
            log.error("%s is unreadable (%s): moved to %s, feedback starts empty",
                      self.path, exc, aside)  # fmt: skip
            self.path.rename(aside)
            for suffix in ("-wal", "-shm"):
                self.path.with_name(self.path.name + suffix).unlink(missing_ok=True)
            self._conn = self._open()

    def _open(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")
            conn.executescript(_SCHEMA)
            conn.execute("SELECT count(*) FROM queries").fetchone()
        except sqlite3.DatabaseError:
            conn.close()
            raise
        return conn

    def load(self, limit: int) -> Iterator[QueryRow]:
        """The newest `limit` remembered queries, oldest first."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT query_id, collection, space_id, documents, first_click, grades FROM"
                " (SELECT * FROM queries ORDER BY seq DESC LIMIT ?) ORDER BY seq",
                (limit,),
            ).fetchall()
        for qid, collection, space_id, docs, first, grades in rows:
            yield QueryRow(qid, collection, space_id, orjson.loads(docs), first,
                           orjson.loads(grades) if grades else {})  # fmt: skip

    def append(self, rows: Iterable[QueryRow]) -> None:
        """Remember answered queries (one transaction); a query already there is kept as is."""
        values = [(r.query_id, r.collection, r.space_id, orjson.dumps(r.documents)) for r in rows]
        if not values:
            return
        with self._lock, self._conn:
            self._conn.executemany(
                "INSERT OR IGNORE INTO queries (query_id, collection, space_id, documents)"
                " VALUES (?, ?, ?, ?)",
                values,
            )

    def mark(self, row: QueryRow) -> None:
        """Write a query with its marks, committed before this returns (the query may not have
        been appended yet: it is written whole)."""
        grades = orjson.dumps(row.grades) if row.grades else None
        with self._lock, self._conn:
            self._conn.execute(
                "INSERT INTO queries (query_id, collection, space_id, documents, first_click,"
                " grades) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (query_id) DO UPDATE SET"
                " first_click = excluded.first_click, grades = excluded.grades",
                (row.query_id, row.collection, row.space_id, orjson.dumps(row.documents),
                 row.first_click, grades),
            )  # fmt: skip

    def trim(self, keep: int) -> int:
        """Drop all but the newest `keep` rows; returns how many went."""
        with self._lock, self._conn:
            return self._conn.execute(
                "DELETE FROM queries WHERE seq <= (SELECT seq FROM queries ORDER BY seq DESC"
                " LIMIT 1 OFFSET ?)",
                (keep,),
            ).rowcount

    def forget(self, collection: str) -> None:
        """Drop every query of a (deleted) collection."""
        with self._lock, self._conn:
            self._conn.execute("DELETE FROM queries WHERE collection = ?", (collection,))

    def close(self) -> None:
        with self._lock:
            self._conn.close()
