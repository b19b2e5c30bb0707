"""The lexical index: SQLite FTS5 (bm25) over chunk text and a title column, in the store itself.

`chunks_fts` (migration 5) is an external-content FTS5 table over the view `chunks_lexical`
(`chunks.text`, `chunks.title` of the chunks with `lexical` set), kept in step by triggers on
every chunk insert and delete, so it commits in the same transaction as the chunk writes: it
survives restarts, follows deletes and compaction for free, is copied by a store backup and
needs no snapshot or change-log replay of its own. Chunks belong to one embedding space, so a
search names (collection, space): queries read the serving space's chunks, and after a model
cutover the new space's chunks (written during the back-fill) serve at once.

A collection created with `"lexical": false` stores its chunks with `lexical = 0`: the triggers'
WHEN clauses skip them, so they cost no FTS rows and no FTS work on the write path.

`title` holds the values of the collection's `lexical_fields` (document metadata keys, default
`title`) for every chunk of the document; bm25 weighs a title match TITLE_WEIGHT times a text
match (a section's title names it better than any sentence in it).

One FTS table holds every collection; bm25's statistics (document frequencies, mean length) are
therefore shared by the collections of one store (and by both spaces of an upgrade in flight,
which hold the same text twice: the ratios barely move). Collections of very different
vocabularies on one server rank a little less sharply than with a table each.

User text never reaches FTS5's query syntax: it is cut into word tokens and each is quoted as a
string, ORed (bm25 ranks chunks that match more and rarer terms first), plus the whole query as
one quoted phrase, so chunks holding the words in order (a dotted identifier, a title) rank
higher. English stop words are left out (and then the phrase too): they cost the most to match
and weigh the least. `"`, `*`, `NEAR(`, `-`, `:`, `^`, `AND`/`OR`/`NOT` are therefore plain text (or
separators), never operators.
"""

from __future__ import annotations

import re
import sqlite3
from typing import Any

from embedstack.storage.filters import filter_sql

MAX_TERMS = 64
MAX_TITLE_CHARS = 2_000
TITLE_WEIGHT = 4.0  # bm25 column weight of the title against 1.0 for the text
# English words so common that matching them reads long position lists for little bm25 weight:
# dropped from queries (bench/hybrid.py dev halves: title queries 2.5x faster at p50, same recall)
# fmt: off
STOPWORDS = frozenset((
    "a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "has", "have", "in",
    "into", "is", "it", "its", "of", "on", "or", "that", "the", "this", "to", "was", "were",
    "will", "with",
))
# fmt: on
_WORD = re.compile(r"\w+", re.UNICODE)


def match_expression(text: str) -> str | None:
    """A safe FTS5 MATCH expression for free text: its word tokens but stop words, each quoted,
    ORed, and (when it had no stop words) all of them in order as one phrase. A text of stop
    words only keeps them. None when the text has no word characters at all."""
    words = [w for w in _WORD.findall(text) if w.strip("_")][:MAX_TERMS]
    kept = [w for w in words if w.lower() not in STOPWORDS] or words
    terms: list[str] = []
    seen: set[str] = set()
    for word in kept:
        if word.lower() not in seen:
            seen.add(word.lower())
            terms.append(_quoted(word))
    if len(words) > 1 and len(kept) == len(words):
        terms.append(_quoted(" ".join(words)))
    return " OR ".join(terms) or None


def _quoted(text: str) -> str:
    return '"' + text.replace('"', '""') + '"'


def title(metadata: dict[str, Any], fields: tuple[str, ...]) -> str:
    """The title column of a document's chunks: the text of its `fields` metadata values."""
    parts: list[str] = []
    for key in fields:
        value = metadata.get(key)
        items = value if isinstance(value, list) else [value]
        parts += [str(v) for v in items if isinstance(v, str | int | float) and v is not True]
    return " ".join(p for p in parts if p)[:MAX_TITLE_CHARS]


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
        f"SELECT chunks_fts.rowid, -bm25(chunks_fts, 1.0, {TITLE_WEIGHT}) FROM chunks_fts"
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
    sql += f" ORDER BY bm25(chunks_fts, 1.0, {TITLE_WEIGHT}) LIMIT ?"
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
