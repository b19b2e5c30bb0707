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

A collection split over several stores (cluster shards) would rank with each store's own
statistics; `stats` reads what bm25 takes from the whole table for one query (rows, tokens,
rows holding each phrase), which add up over stores, and `search(..., total=)` scores with the
sum: every chunk gets the score it would get in one store holding all of them (bm25 of a query
is a sum over its phrases, and each phrase's term, taken from FTS5's own bm25 of that phrase,
is re-weighted from the store's statistics to the total's).
"""

from __future__ import annotations

import math
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from embedstack.storage.filters import filter_sql

MAX_TERMS = 64
MAX_TITLE_CHARS = 2_000
TITLE_WEIGHT = 4.0  # bm25 column weight of the title against 1.0 for the text
BM25_K1, BM25_B = 1.2, 0.75  # the constants of FTS5's bm25 (ext/fts5/fts5_aux.c)
BM25_MIN_IDF = 1e-6  # what FTS5 uses for a phrase in half the rows or more
_AVERAGES_ROWID = 1  # FTS5 keeps (rows, tokens of each column) in chunks_fts_data at this id
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
    """A safe FTS5 MATCH expression for free text: its phrases (see `phrases`) ORed. None when
    the text has no word characters at all."""
    return " OR ".join(phrases(text)) or None


def phrases(text: str) -> list[str]:
    """The quoted phrases a text is searched as: its word tokens but stop words, each quoted,
    and (when it had no stop words) all of them in order as one phrase. A text of stop words
    only keeps them."""
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
    return terms


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


@dataclass(frozen=True)
class LexicalStats:
    """What bm25 reads from a whole FTS table for one query: its rows, their tokens (every
    column), and for each of the query's phrases the rows holding it. The stats of several
    stores add up (`+`) to those of one store holding all their rows."""

    rows: int
    tokens: int
    hits: tuple[int, ...]

    def __add__(self, other: LexicalStats) -> LexicalStats:
        if len(self.hits) != len(other.hits):
            raise ValueError("lexical stats of different queries do not add up")
        hits = tuple(a + b for a, b in zip(self.hits, other.hits, strict=True))
        return LexicalStats(self.rows + other.rows, self.tokens + other.tokens, hits)

    def idf(self, phrase: int) -> float:
        n = self.hits[phrase]
        idf = math.log((self.rows - n + 0.5) / (n + 0.5))
        return idf if idf > 0 else BM25_MIN_IDF

    def per_token(self) -> float:
        """k1 b / avgdl: K(|D|) = k1 (1 - b) + per_token |D|."""
        avgdl = self.tokens / self.rows if self.rows else 1.0
        return BM25_K1 * BM25_B / (avgdl or 1.0)


def stats(conn: sqlite3.Connection, text: str) -> LexicalStats:
    """This store's statistics for a query of `text` (see LexicalStats)."""
    row = conn.execute(
        "SELECT block FROM chunks_fts_data WHERE id = ?", (_AVERAGES_ROWID,)
    ).fetchone()
    sizes = varints(row[0]) if row is not None and row[0] else [0]
    hits = tuple(
        int(conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH ?", (p,))
            .fetchone()[0])
        for p in phrases(text)
    )  # fmt: skip
    return LexicalStats(sizes[0], sum(sizes[1:]), hits)


def varints(blob: bytes) -> list[int]:
    """The SQLite varints a blob holds (FTS5's averages and docsize records)."""
    out: list[int] = []
    i = 0
    while i < len(blob):
        value = 0
        for j in range(9):
            byte = blob[i]
            i += 1
            if j == 8:
                value = (value << 8) | byte
                break
            value = (value << 7) | (byte & 0x7F)
            if byte < 0x80:
                break
        out.append(value)
    return out


def search(
    conn: sqlite3.Connection,
    collection: str,
    space_id: str,
    text: str,
    k: int,
    flt: dict[str, Any] | None = None,
    total: LexicalStats | None = None,
) -> tuple[list[int], list[float]]:
    """Chunk ids and bm25 scores (higher is better), best first, at most k; with `total`, bm25
    as if this store held every row `total` counts (see the module doc)."""
    if total is not None:
        return _search_total(conn, collection, space_id, text, k, flt, total)
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
    # equal scores in (document, ordinal) order, so the cut at k is the same on every store
    sql += f" ORDER BY bm25(chunks_fts, 1.0, {TITLE_WEIGHT}), c.document_id, c.ordinal LIMIT ?"
    rows = conn.execute(sql, (*params, int(k))).fetchall()
    return [int(r[0]) for r in rows], [float(r[1]) for r in rows]


def _search_total(
    conn: sqlite3.Connection, collection: str, space_id: str, text: str, k: int,
    flt: dict[str, Any] | None, total: LexicalStats,
) -> tuple[list[int], list[float]]:  # fmt: skip
    """Each phrase searched alone: FTS5's bm25 of one phrase is idf f (k1+1) / (f + K(|D|)),
    so with this store's idf and K the row's weighted frequency f comes back exactly, and the
    term is recomputed with the total's idf and average length; summed over the phrases."""
    queried = phrases(text)
    if len(queried) != len(total.hits):
        raise ValueError("lexical stats of another query")
    local = stats(conn, text)
    sql = (
        f"SELECT chunks_fts.rowid, -bm25(chunks_fts, 1.0, {TITLE_WEIGHT}), s.sz, c.document_id,"
        " c.ordinal FROM chunks_fts"
        # CROSS JOIN keeps the phrase's matches the outer loop: SQLite would otherwise scan the
        # collection's chunks and run the MATCH once per chunk (100x slower, measured)
        " CROSS JOIN chunks c ON c.id = chunks_fts.rowid CROSS JOIN chunks_fts_docsize s"
        " ON s.id = chunks_fts.rowid"
    )
    where, extra = "", list[Any]()
    if flt:
        clause, extra = filter_sql(flt)
        sql += " CROSS JOIN documents d ON d.collection = c.collection AND d.id = c.document_id"
        where = f" AND {clause}"
    sql += f" WHERE chunks_fts MATCH ? AND c.collection = ? AND c.space_id = ?{where}"
    scores: dict[int, float] = {}
    owners: dict[int, tuple[str, int]] = {}
    lengths: dict[int, int] = {}  # |D| of each row, decoded once
    k1, fixed = BM25_K1 + 1, BM25_K1 * (1 - BM25_B)
    here, there = local.per_token(), total.per_token()
    for i, phrase in enumerate(queried):
        if not local.hits[i]:
            continue
        top, idf = local.idf(i) * k1, total.idf(i)
        rows = conn.execute(sql, (phrase, collection, space_id, *extra))
        for rowid, score, sizes, document_id, ordinal in rows:
            tokens = lengths.get(rowid)
            if tokens is None:
                tokens = lengths[rowid] = _length(sizes)
                owners[rowid] = (document_id, ordinal)
            share = min(score / top, 1 - 1e-12)  # f / (f + K), in [0, 1)
            # f is a sum of column weights (whole numbers here): rounded, equal chunks score
            # exactly equal whichever store they are in
            freq = round(share * (fixed + here * tokens) / (1 - share), 6)
            term = idf * freq * k1 / (freq + fixed + there * tokens)
            scores[rowid] = scores.get(rowid, 0.0) + term
    ranked = sorted(scores.items(), key=lambda t: (-t[1], owners[t[0]]))[: int(k)]
    return [i for i, _ in ranked], [s for _, s in ranked]


def _length(sizes: bytes) -> int:
    """|D|: the tokens of a row, every column (its docsize record)."""
    if max(sizes, default=0) < 0x80:  # every column under 128 tokens: one byte each
        return sum(sizes)
    return sum(varints(sizes))


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
