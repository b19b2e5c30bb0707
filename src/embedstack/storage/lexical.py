"""The lexical index: SQLite FTS5 (bm25) over chunk text, in the store itself.

`chunks_fts` (migration 3) is an external-content FTS5 table over `chunks.text`, kept in step by
triggers on every chunk insert and delete, so it commits in the same transaction as the chunk
writes: it survives restarts, follows deletes and compaction for free, is copied by a store
backup and needs no snapshot or change-log replay of its own. Chunks belong to one embedding
space, so a search names (collection, space): queries read the serving space's chunks, and after
a model cutover the new space's chunks (written during the back-fill) serve at once.

One FTS table holds every collection; bm25's statistics (document frequencies, mean length) are
therefore shared by the collections of one store (and by both spaces of an upgrade in flight,
which hold the same text twice: the ratios barely move). Collections of very different
vocabularies on one server rank a little less sharply than with a table each.

User text never reaches FTS5's query syntax: it is cut into word tokens and each is quoted as a
string, ORed (bm25 ranks chunks that match more and rarer terms first). `"`, `*`, `NEAR(`, `-`,
`:`, `^`, `AND`/`OR`/`NOT` are therefore plain text (or separators), never operators.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from embedstack.storage.filters import filter_sql

MAX_TERMS = 64
_WORD = re.compile(r"\w+", re.UNICODE)


def match_expression(text: str) -> str | None:
    """A safe FTS5 MATCH expression for free text: its word tokens, each quoted, ORed.
    None when the text has no word characters at all."""
    terms: list[str] = []
    seen: set[str] = set()
    for word in _WORD.findall(text):
        key = word.lower()
        if key in seen or not key.strip("_"):
            continue
        seen.add(key)
        terms.append('"' + word.replace('"', '""') + '"')
        if len(terms) == MAX_TERMS:
            break
    return " OR ".join(terms) or None


def search(
    conn: sqlite3.Connection,
    collection: str,
    space_id: str,
    text: str,
    k: int,
    flt: dict[str, Any] | None = None,
) -> tuple[list[int], list[float]]:
    """Chunk ids and bm25 scores (higher is better), best first, at most k."""
    expr = match_expression(text)
    if expr is None:
        return [], []
    sql = (
        "SELECT chunks_fts.rowid, -bm25(chunks_fts) FROM chunks_fts"
        " JOIN chunks c ON c.id = chunks_fts.rowid"
    )
    params: list[Any] = [expr, collection, space_id]
    where = ""
    if flt:
        clause, extra = filter_sql(flt)
        sql += " JOIN documents d ON d.collection = c.collection AND d.id = c.document_id"
        where = f" AND {clause}"
        params += extra
    sql += f" WHERE chunks_fts MATCH ? AND c.collection = ? AND c.space_id = ?{where}"
    sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
    rows = conn.execute(sql, (*params, int(k))).fetchall()
    return [int(r[0]) for r in rows], [float(r[1]) for r in rows]


def count(conn: sqlite3.Connection, collection: str, space_id: str) -> int:
    """Chunks of a space the lexical index can return (for consistency checks)."""
    row = conn.execute(
        "SELECT count(*) FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid"
        " WHERE c.collection = ? AND c.space_id = ?",
        (collection, space_id),
    ).fetchone()
    return int(row[0])


def integrity_check(conn: sqlite3.Connection) -> None:
    """Raise sqlite3.DatabaseError when the FTS index disagrees with the chunks table."""
    conn.execute("INSERT INTO chunks_fts(chunks_fts, rank) VALUES ('integrity-check', 1)")
