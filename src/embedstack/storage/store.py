"""The SQLite store: the source of truth. WAL mode, one writer connection, readers per thread."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from embedstack.errors import Conflict, NotFound
from embedstack.fsutil import storage_failure
from embedstack.storage import lexical
from embedstack.storage.catalog import ACTIVE_STATES, CatalogMixin, SpaceInfo
from embedstack.storage.filters import filter_sql, json_path
from embedstack.storage.keys import KeysMixin
from embedstack.storage.migrations import MIGRATIONS, statements
from embedstack.types import CollectionConfig

_SQL_SLICE = 500  # ids per IN (...) list: far under SQLite's bound-variable limit
_MMAP_BYTES = 256 << 20  # of the store file each connection reads through a memory map
_PAGE_BYTES = 16384  # page size of a new store file
_CATALOG_CACHE_MAX = 10_000  # cached catalog reads (names and aliases looked up) before a reset


@dataclass(frozen=True)
class CollectionRecord:
    name: str
    config: CollectionConfig
    space_id: str
    created_at: float


@dataclass(frozen=True)
class DocumentRow:
    id: str
    text: str
    metadata: dict[str, Any]
    content_hash: str
    vector: bytes | None = None
    indexed_hash: str | None = None


@dataclass(frozen=True)
class ChunkRow:
    """A chunk ready to store; `vector` is float32 bytes in the chunk's space."""

    ordinal: int
    text: str
    start: int
    end: int
    token_count: int
    hash: str
    vector: bytes


@dataclass(frozen=True)
class DocumentChunks:
    document_id: str
    content_hash: str  # the version these chunks were made from
    chunks: list[ChunkRow]


@dataclass(frozen=True)
class WriteResult:
    added: int
    removed: int
    kept: int
    stale_documents: int  # changed or deleted while being processed: left to a later job
    max_seq: int


@dataclass(frozen=True)
class StoredVectors:
    """What `put_vectors` wrote: the ids of the documents that changed, chunks added and
    removed, and the newest change seq (the indexes hold the vectors once they reach it)."""

    changed: list[str]
    added: int
    removed: int
    seq: int


@dataclass(frozen=True)
class HitRow:
    chunk_id: int
    document_id: str
    ordinal: int
    text: str
    metadata: dict[str, Any]


class Store(CatalogMixin, KeysMixin):
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        self._write_lock = threading.Lock()
        self._writer = self._connect()
        # the catalog (collections, spaces, aliases) as queries read it, kept in memory: an
        # entry is good while the version it was read under is current; every catalog write
        # bumps the version after its commit (_catalog_tx), so no stale entry survives a change
        self._catalog_version = 0
        self._catalog_lock = threading.Lock()
        self._catalog_cache: dict[tuple[str, str], tuple[int, Any]] = {}
        self._migrate()

    # -- connections ------------------------------------------------------------------------
    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
        # a new store only (an existing file keeps its page size): a chunk row with a 384-d
        # vector is ~1.7 kB, two per 4 kB page wasting a fifth of it; 16 kB pages hold nine.
        # 100k bulk vectors: 191 MiB on disk against 213 MiB, inserted 10% faster
        conn.execute(f"PRAGMA page_size={_PAGE_BYTES}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA foreign_keys=ON")
        # reads through a memory map skip a pread and a copy per page: hydrating a query's hits
        # took 80 us without, 52 us with (10 random chunks of 2,000; in-process, thread time).
        # Bounded: touched pages of the file count as resident memory
        conn.execute(f"PRAGMA mmap_size={_MMAP_BYTES}")
        return conn

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction. A failed COMMIT is rolled back too (else the writer would stay
        inside a transaction); a full disk is InsufficientStorage, the transaction not made."""
        with self._write_lock:
            try:
                self._writer.execute("BEGIN IMMEDIATE")
                try:
                    yield self._writer
                    self._writer.execute("COMMIT")
                except BaseException:
                    if self._writer.in_transaction:
                        self._writer.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                full = storage_failure(exc, f"the store ({self.path})")
                if full is None:
                    raise
                raise full from exc

    @contextmanager
    def _catalog_tx(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that changes the catalog: cached reads of it expire on exit."""
        try:
            with self._tx() as c:
                yield c
        finally:
            with self._catalog_lock:
                self._catalog_version += 1

    def _cached(self, key: tuple[str, str], read: Callable[[], Any]) -> Any:
        version = self._catalog_version  # read before the data: a write after it expires it
        hit = self._catalog_cache.get(key)
        if hit is not None and hit[0] == version:
            return hit[1]
        value = read()
        if len(self._catalog_cache) >= _CATALOG_CACHE_MAX:
            self._catalog_cache.clear()
        self._catalog_cache[key] = (version, value)
        return value

    def catalog_cached(self, name: str) -> bool:
        """Whether `resolve_collection(name)` and its serving spaces answer from memory now."""
        version = self._catalog_version
        hit = self._catalog_cache.get(("resolve", name))
        if hit is None or hit[0] != version:
            return False
        spaces = self._catalog_cache.get(("spaces", hit[1].name))
        return spaces is not None and spaces[0] == version

    def resolve_collection(self, name: str) -> CollectionRecord:
        """The collection named `name`, or the one alias `name` points to; from memory until
        the catalog changes. NotFound when neither exists."""
        record: CollectionRecord = self._cached(
            ("resolve", name), lambda: self.get_collection(self.resolve(name))
        )
        return record

    def serving_spaces(self, collection: str) -> list[SpaceInfo]:
        """`spaces(collection)` (the active ones), from memory until the catalog changes."""
        found: list[SpaceInfo] = self._cached(
            ("spaces", collection), lambda: self.spaces(collection)
        )
        return list(found)

    def _migrate(self) -> None:
        with self._tx() as c:
            c.execute("CREATE TABLE IF NOT EXISTS schema_version(version INTEGER NOT NULL)")
            row = c.execute("SELECT max(version) FROM schema_version").fetchone()
            current = row[0] or 0
            for number, sql in enumerate(MIGRATIONS, start=1):
                if number > current:
                    for statement in statements(sql):
                        c.execute(statement)
                    c.execute("INSERT INTO schema_version(version) VALUES (?)", (number,))

    def close(self) -> None:
        with self._write_lock:  # a transaction in flight on another thread ends first
            self._writer.close()

    # -- collections ------------------------------------------------------------------------
    def create_collection(self, name: str, config: CollectionConfig, space_id: str) -> None:
        with self._catalog_tx() as c:
            if c.execute("SELECT 1 FROM aliases WHERE alias=?", (name,)).fetchone():
                raise Conflict(f"{name!r} is an alias: pick another collection name")
            if c.execute("SELECT 1 FROM collections WHERE name=?", (name,)).fetchone():
                raise Conflict(f"collection {name!r} already exists: pick another name")
            c.execute(
                "INSERT INTO collections(name, config, space_id, created_at) VALUES (?,?,?,?)",
                (name, orjson.dumps(config.to_json()).decode(), space_id, time.time()),
            )
            self.add_space(c, name, space_id, config.model, config.model_spec, "serving")

    def get_collection(self, name: str) -> CollectionRecord:
        row = (
            self._reader()
            .execute(
                "SELECT name, config, space_id, created_at FROM collections WHERE name=?", (name,)
            )
            .fetchone()
        )
        if row is None:
            raise NotFound(
                f"collection {name!r} does not exist: create it with POST /v1/collections"
            )
        return _collection(row)

    def update_collection_config(self, name: str, config: CollectionConfig) -> None:
        with self._catalog_tx() as c:
            if (
                c.execute(
                    "UPDATE collections SET config=? WHERE name=?",
                    (orjson.dumps(config.to_json()).decode(), name),
                ).rowcount
                == 0
            ):
                raise NotFound(f"collection {name!r} does not exist")

    def list_collections(self) -> list[CollectionRecord]:
        rows = self._reader().execute(
            "SELECT name, config, space_id, created_at FROM collections ORDER BY name"
        )
        return [_collection(r) for r in rows]

    def delete_collection(self, name: str) -> None:
        with self._catalog_tx() as c:
            if c.execute("DELETE FROM collections WHERE name=?", (name,)).rowcount == 0:
                raise NotFound(f"collection {name!r} does not exist")
            for table in ("documents", "chunks", "changes", "spaces", "upgrades", "aliases",
                          "metadata_changes"):  # fmt: skip
                c.execute(f"DELETE FROM {table} WHERE collection=?", (name,))

    def collection_stats(self, name: str) -> dict[str, int]:
        r = self._reader()
        docs, pending = r.execute(
            "SELECT count(*), coalesce(sum(indexed_hash IS NOT content_hash), 0) "
            "FROM documents WHERE collection=?",
            (name,),
        ).fetchone()
        chunks = r.execute(
            "SELECT count(*) FROM chunks c JOIN collections k"
            " ON k.name=c.collection AND k.space_id=c.space_id WHERE c.collection=?",
            (name,),
        ).fetchone()[0]
        return {"documents": docs, "documents_pending": pending, "chunks": chunks}

    def chunks_by_space(self, name: str) -> dict[str, int]:
        """Stored chunks of a collection per embedding space (serving, shadow, previous)."""
        rows = self._reader().execute(
            "SELECT space_id, count(*) FROM chunks WHERE collection=? GROUP BY space_id", (name,)
        )
        return {str(space): int(n) for space, n in rows}

    # -- documents --------------------------------------------------------------------------
    def put_documents(self, collection: str, docs: Sequence[DocumentRow]) -> list[str]:
        """Upsert documents in one transaction. Returns the ids that need (re)indexing.

        The stored hashes are read a slice at a time and the upserts run as one executemany."""
        with self._tx() as c:
            changed = self._upsert_documents(c, collection, docs, keep_vectors=True)
        return [d.id for d in changed]

    def put_vectors(self, collection: str, docs: Sequence[DocumentRow]) -> StoredVectors | None:
        """Bring-your-own-vector documents stored once, indexed mark set, in one transaction:
        the document rows without their vector and one chunk each carrying it, in every active
        space of the collection (the index takes them in from the change log). No job has to
        copy them later, and no vector is kept twice. None, with nothing written, when a space
        of the collection embeds with a model (an upgrade under way): `put_documents` then, and
        the worker embeds their text for that space."""
        with self._tx() as c:
            spaces = c.execute(
                "SELECT space_id, model FROM spaces WHERE collection=? AND state IN"
                f" ({','.join('?' * len(ACTIVE_STATES))}) ORDER BY created_at",
                (collection, *ACTIVE_STATES),
            ).fetchall()
            if any(model for _, model in spaces):
                return None
            changed = self._upsert_documents(c, collection, docs, keep_vectors=False)
            prepared = [vector_chunks(d) for d in changed]
            added = removed = 0
            for n, (space_id, _) in enumerate(spaces):
                last = n == len(spaces) - 1
                result = self._write_chunks(c, collection, space_id, prepared, mark_indexed=last)
                added, removed = added + result.added, removed + result.removed
            seq = self._last_seq(c)
        return StoredVectors([d.id for d in changed], added, removed, seq)

    def _upsert_documents(
        self, c: sqlite3.Connection, collection: str, docs: Sequence[DocumentRow],
        keep_vectors: bool,
    ) -> list[DocumentRow]:  # fmt: skip
        """Upsert `docs` (vectors kept on the rows, or NULL there when their chunks carry them);
        returns those that changed. An unchanged, already indexed document costs nothing."""
        if not c.execute("SELECT 1 FROM collections WHERE name=?", (collection,)).fetchone():
            raise NotFound(f"collection {collection!r} does not exist")
        now = time.time()
        stored = self._content_hashes(c, collection, [d.id for d in docs], "indexed_hash")
        changed = [d for d in docs if stored.get(d.id) != (d.content_hash, d.content_hash)]
        c.executemany(
            "INSERT INTO documents(collection, id, text, metadata, vector, content_hash,"
            " indexed_hash, updated_at) VALUES (?,?,?,?,?,?,NULL,?)"
            " ON CONFLICT(collection, id) DO UPDATE SET text=excluded.text,"
            " metadata=excluded.metadata, vector=excluded.vector,"
            " content_hash=excluded.content_hash, updated_at=excluded.updated_at",
            [
                (collection, d.id, d.text, orjson.dumps(d.metadata).decode(),
                 d.vector if keep_vectors else None, d.content_hash, now)
                for d in changed
            ],
        )  # fmt: skip
        return changed

    def get_documents(self, collection: str, ids: Sequence[str]) -> list[DocumentRow]:
        out: list[DocumentRow] = []
        r = self._reader()
        for start in range(0, len(ids), 500):
            part = list(ids[start : start + 500])
            marks = ",".join("?" * len(part))
            rows = r.execute(
                "SELECT id, text, metadata, content_hash, vector, indexed_hash FROM documents"
                f" WHERE collection=? AND id IN ({marks})",
                (collection, *part),
            )
            out += [
                DocumentRow(row[0], row[1], orjson.loads(row[2]), row[3], row[4], row[5])
                for row in rows
            ]
        return out

    def document_ids(self, collection: str, source: str | None = None) -> list[str]:
        """Ids of a collection's documents; with `source`, those whose metadata "source" is it
        (what an ingest source compares with its own ids to find deletions)."""
        sql = "SELECT id FROM documents WHERE collection=?"
        args: tuple[str, ...] = (collection,)
        if source is not None:
            sql += " AND json_extract(metadata, '$.source') = ?"
            args += (source,)
        return [row[0] for row in self._reader().execute(sql, args)]

    def delete_document(self, collection: str, doc_id: str) -> int:
        """Delete a document and its chunks. Returns the change seq (0 if nothing changed)."""
        with self._tx() as c:
            if (
                c.execute(
                    "DELETE FROM documents WHERE collection=? AND id=?", (collection, doc_id)
                ).rowcount
                == 0
            ):
                raise NotFound(f"document {doc_id!r} does not exist in collection {collection!r}")
            rows = c.execute(
                "SELECT id, space_id FROM chunks WHERE collection=? AND document_id=?",
                (collection, doc_id),
            ).fetchall()
            for chunk_id, space in rows:
                c.execute("DELETE FROM chunks WHERE id=?", (chunk_id,))
                c.execute(
                    "INSERT INTO changes(collection, space_id, chunk_id, op) VALUES (?,?,?,-1)",
                    (collection, space, chunk_id),
                )
            return self._last_seq(c)

    def pending_documents(self, limit: int = 100_000) -> dict[str, list[str]]:
        """Documents stored but not (or no longer) indexed, by collection: for recovery."""
        out: dict[str, list[str]] = {}
        rows = self._reader().execute(
            "SELECT collection, id FROM documents WHERE indexed_hash IS NOT content_hash LIMIT ?",
            (limit,),
        )
        for coll, doc_id in rows:
            out.setdefault(coll, []).append(doc_id)
        return out

    # -- chunks -----------------------------------------------------------------------------
    def vectors_by_hash(
        self, collection: str, space_id: str, hashes: Sequence[str]
    ) -> dict[str, bytes]:
        out: dict[str, bytes] = {}
        r = self._reader()
        uniq = list(dict.fromkeys(hashes))
        for start in range(0, len(uniq), 500):
            part = uniq[start : start + 500]
            marks = ",".join("?" * len(part))
            rows = r.execute(
                "SELECT hash, vector FROM chunks WHERE collection=? AND space_id=?"
                f" AND hash IN ({marks}) AND token_count > 0",  # chunks_by_text_hash
                (collection, space_id, *part),
            )
            for h, vec in rows:
                out[h] = vec
        return out

    def write_chunks(
        self,
        collection: str,
        space_id: str,
        docs: Sequence[DocumentChunks],
        mark_indexed: bool = True,
    ) -> WriteResult:
        """Replace the chunks of each document (in one space) in one transaction.

        A document whose stored content changed (or that was deleted) since `content_hash`
        was read is skipped: the job that carries the newer version will index it.

        Batched: the current hashes and old chunks are read a slice of documents at a time, and
        new chunks, their change-log entries and the indexed marks are written with executemany
        (chunk ids allotted here, past every id the table ever held: AUTOINCREMENT's promise).
        """
        with self._tx() as c:
            return self._write_chunks(c, collection, space_id, docs, mark_indexed)

    def _write_chunks(
        self, c: sqlite3.Connection, collection: str, space_id: str,
        docs: Sequence[DocumentChunks], mark_indexed: bool,
    ) -> WriteResult:  # fmt: skip
        """`write_chunks` inside the caller's transaction. A chunk with no text and no title
        gets no lexical index entry (bring-your-own vectors mostly): it has no term to find."""
        removed = kept = stale = 0
        adds: list[tuple[Any, ...]] = []
        drops: list[int] = []
        marked: list[tuple[str, str]] = []
        marked_ids: set[str] = set()
        on, fields = _lexical_settings(c, collection)
        current = self._content_hashes(c, collection, [d.document_id for d in docs])
        old_chunks = self._old_chunks(c, collection, space_id, docs)
        for d in docs:
            stored = current.get(d.document_id)
            if stored is None or stored[0] != d.content_hash:
                stale += 1
                continue
            if d.document_id in marked_ids:  # listed twice: its chunks are written already
                continue
            marked_ids.add(d.document_id)
            meta = stored[1]
            title = ""
            if on and fields and meta != "{}":
                title = lexical.title(orjson.loads(meta), fields)
            old = old_chunks.get(d.document_id, {})
            for ch in d.chunks:
                if old.pop((ch.ordinal, ch.hash), None) is not None:
                    kept += 1
                    continue
                adds.append((collection, space_id, d.document_id, ch.ordinal, ch.text,
                             ch.start, ch.end, ch.token_count, ch.hash, ch.vector,
                             on and bool(ch.text or title), title))  # fmt: skip
            drops += old.values()
            marked.append((collection, d.document_id))
        next_id = self._next_chunk_id(c)
        ids = range(next_id, next_id + len(adds))
        c.executemany(
            "INSERT INTO chunks(id, collection, space_id, document_id, ordinal, text,"
            " start, end, token_count, hash, vector, lexical, title)"
            " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [(i, *row) for i, row in zip(ids, adds, strict=True)],
        )
        c.executemany("DELETE FROM chunks WHERE id=?", [(i,) for i in drops])
        c.executemany(
            "INSERT INTO changes(collection, space_id, chunk_id, op) VALUES (?,?,?,?)",
            [(collection, space_id, i, 1) for i in ids]
            + [(collection, space_id, i, -1) for i in drops],
        )
        removed = len(drops)
        if mark_indexed:
            c.executemany(
                "UPDATE documents SET indexed_hash=content_hash WHERE collection=? AND id=?",
                marked,
            )
        return WriteResult(len(adds), removed, kept, stale, self._last_seq(c))

    @staticmethod
    def _content_hashes(
        c: sqlite3.Connection, collection: str, doc_ids: Sequence[str], column: str = "metadata"
    ) -> dict[str, tuple[Any, Any]]:
        """(content_hash, `column`: the metadata JSON or the indexed hash) of each stored
        document among `doc_ids`, read a slice of ids at a time."""
        out: dict[str, tuple[Any, Any]] = {}
        uniq = list(dict.fromkeys(doc_ids))
        for start in range(0, len(uniq), _SQL_SLICE):
            part = uniq[start : start + _SQL_SLICE]
            marks = ",".join("?" * len(part))
            for doc_id, h, other in c.execute(
                f"SELECT id, content_hash, {column} FROM documents"
                f" WHERE collection=? AND id IN ({marks})",
                (collection, *part),
            ):
                out[doc_id] = (h, other)
        return out

    @staticmethod
    def _old_chunks(
        c: sqlite3.Connection, collection: str, space_id: str, docs: Sequence[DocumentChunks]
    ) -> dict[str, dict[tuple[int, str], int]]:
        """{document id: {(ordinal, hash): chunk id}} of the chunks stored for `docs`."""
        out: dict[str, dict[tuple[int, str], int]] = {}
        uniq = list(dict.fromkeys(d.document_id for d in docs))
        for start in range(0, len(uniq), _SQL_SLICE):
            part = uniq[start : start + _SQL_SLICE]
            marks = ",".join("?" * len(part))
            for chunk_id, doc_id, ordinal, h in c.execute(
                "SELECT id, document_id, ordinal, hash FROM chunks WHERE collection=?"
                f" AND space_id=? AND document_id IN ({marks})",
                (collection, space_id, *part),
            ):
                out.setdefault(doc_id, {})[(ordinal, h)] = chunk_id
        return out

    @staticmethod
    def _next_chunk_id(c: sqlite3.Connection) -> int:
        """The first chunk id never used: past AUTOINCREMENT's high-water mark and every row."""
        row = c.execute("SELECT seq FROM sqlite_sequence WHERE name='chunks'").fetchone()
        top = c.execute("SELECT max(id) FROM chunks").fetchone()[0]
        return max(int(row[0]) if row else 0, int(top or 0)) + 1

    @staticmethod
    def _last_seq(c: sqlite3.Connection) -> int:
        """The newest change of any collection: an upper bound of each collection's own, read
        from the primary key in O(1) (a per-collection max scanned the collection's whole log
        in every write transaction). Readers cap it per space (IndexManager.caught_up)."""
        row = c.execute("SELECT max(seq) FROM changes").fetchone()
        return int(row[0] or 0)

    def truncate_changes(self, collection: str, space_id: str, upto: int) -> int:
        """Forget a space's changes before `upto` (an index snapshot holds them; a rebuild reads
        the chunks). The change at `upto` stays, so max_seq keeps its value. Returns the count."""
        with self._tx() as c:
            cur = c.execute(
                "DELETE FROM changes WHERE collection=? AND space_id=? AND seq<?",
                (collection, space_id, upto),
            )
            return int(cur.rowcount)

    def max_seq(self, collection: str, space_id: str) -> int:
        row = (
            self._reader()
            .execute(
                "SELECT max(seq) FROM changes WHERE collection=? AND space_id=?",
                (collection, space_id),
            )
            .fetchone()
        )
        return int(row[0] or 0)

    def changes_since(
        self, collection: str, space_id: str, seq: int, limit: int = 50_000
    ) -> list[tuple[int, int, int]]:
        """[(seq, chunk id, op)] after `seq`, oldest first; op 1 = add, -1 = remove."""
        return (
            self._reader()
            .execute(
                "SELECT seq, chunk_id, op FROM changes WHERE collection=? AND space_id=? AND seq>?"
                " ORDER BY seq LIMIT ?",
                (collection, space_id, seq, limit),
            )
            .fetchall()
        )

    def chunk_vectors(self, ids: Sequence[int], dim: int) -> tuple[np.ndarray, np.ndarray]:
        """Vectors of the chunks that still exist among `ids`."""
        found: list[int] = []
        blobs: list[bytes] = []
        r = self._reader()
        for start in range(0, len(ids), 900):
            part = [int(i) for i in ids[start : start + 900]]
            marks = ",".join("?" * len(part))
            for chunk_id, vec in r.execute(
                f"SELECT id, vector FROM chunks WHERE id IN ({marks})", part
            ):
                found.append(chunk_id)
                blobs.append(vec)
        return _to_arrays(found, blobs, dim)

    def iter_vectors(
        self, collection: str, space_id: str, dim: int, batch: int = 20_000
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every live chunk vector of a space, in id order, in batches."""
        last = 0
        r = self._reader()
        while True:
            rows = r.execute(
                "SELECT id, vector FROM chunks WHERE collection=? AND space_id=? AND id>?"
                " ORDER BY id LIMIT ?",
                (collection, space_id, last, batch),
            ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield _to_arrays([r_[0] for r_ in rows], [r_[1] for r_ in rows], dim)

    def all_chunk_ids(self, collection: str, space_id: str) -> list[int]:
        rows = self._reader().execute(
            "SELECT id FROM chunks WHERE collection=? AND space_id=?", (collection, space_id)
        )
        return [r[0] for r in rows]

    def hydrate(
        self, chunk_ids: Sequence[int], metadata: dict[tuple[str, str], Any] | None = None
    ) -> dict[int, HitRow]:
        """Text and document metadata of chunks that still exist (and whose document does).

        Reads in slices under SQLite's variable limit, and parses each document's metadata once:
        hits of one document share one dict. Pass the same `metadata` cache to several calls
        (one query's fetch rounds) to parse it once per query."""
        out: dict[int, HitRow] = {}
        cache: dict[tuple[str, str], Any] = {} if metadata is None else metadata
        ids = list(dict.fromkeys(int(i) for i in chunk_ids))
        r = self._reader()
        for start in range(0, len(ids), _SQL_SLICE):
            part = ids[start : start + _SQL_SLICE]
            marks = ",".join("?" * len(part))
            # one statement (one read transaction) for chunk and document: the join drops a
            # chunk whose document was deleted meanwhile
            for chunk_id, coll, doc_id, ordinal, text, meta in r.execute(
                "SELECT c.id, c.collection, c.document_id, c.ordinal, c.text, d.metadata"
                " FROM chunks c JOIN documents d ON d.collection=c.collection"
                f" AND d.id=c.document_id WHERE c.id IN ({marks})",
                part,
            ):
                parsed = cache.get((coll, doc_id))
                if parsed is None:
                    parsed = cache[(coll, doc_id)] = orjson.loads(meta)
                out[chunk_id] = HitRow(chunk_id, doc_id, ordinal, text, parsed)
        return out

    def chunk_owners(self, chunk_ids: Sequence[int]) -> dict[int, tuple[str, int]]:
        """(document id, ordinal) of the chunks that exist among `chunk_ids`: what ranking by
        document needs, without the text and metadata that `hydrate` reads."""
        out: dict[int, tuple[str, int]] = {}
        r = self._reader()
        for start in range(0, len(chunk_ids), 900):
            part = [int(i) for i in chunk_ids[start : start + 900]]
            marks = ",".join("?" * len(part))
            for chunk_id, doc_id, ordinal in r.execute(
                f"SELECT id, document_id, ordinal FROM chunks WHERE id IN ({marks})", part
            ):
                out[chunk_id] = (doc_id, ordinal)
        return out

    def filter_chunk_ids(self, collection: str, space_id: str, flt: dict[str, Any]) -> np.ndarray:
        where, params = filter_sql(flt)
        rows = self._reader().execute(
            "SELECT c.id FROM chunks c JOIN documents d"
            " ON d.collection=c.collection AND d.id=c.document_id"
            f" WHERE c.collection=? AND c.space_id=? AND {where}",
            (collection, space_id, *params),
        )
        return np.fromiter((r[0] for r in rows), dtype=np.int64)

    def field_values(
        self, collection: str, space_id: str, keys: Sequence[str],
        chunk_ids: Sequence[int] | None = None, changed_after: int | None = None,
    ) -> tuple[list[int], dict[str, list[Any]]]:  # fmt: skip
        """Per metadata key, json_extract of the document metadata of the space's chunks (the
        values SQL filters compare: index/attributes.py): of `chunk_ids` only (chunks that no
        longer exist are left out), or of the chunks whose document's metadata was replaced
        after metadata_changes seq `changed_after` (see `metadata_seq`), or of every chunk."""
        cols = ", json_extract(d.metadata, ?)" * len(keys)
        paths = [json_path(k) for k in keys]
        sql = f"SELECT c.id{cols} FROM chunks c JOIN documents d ON d.collection=c.collection"
        sql += " AND d.id=c.document_id WHERE c.collection=? AND c.space_id=?"
        r = self._reader()
        if changed_after is not None:
            sql += " AND c.document_id IN (SELECT document_id FROM metadata_changes"
            sql += " WHERE collection=? AND seq>?)"
            rows = r.execute(
                sql, (*paths, collection, space_id, collection, changed_after)
            ).fetchall()
        elif chunk_ids is None:
            rows = r.execute(sql, (*paths, collection, space_id)).fetchall()
        else:
            rows = []
            for start in range(0, len(chunk_ids), _SQL_SLICE):
                part = [int(i) for i in chunk_ids[start : start + _SQL_SLICE]]
                marks = ",".join("?" * len(part))
                rows += r.execute(
                    f"{sql} AND c.id IN ({marks})", (*paths, collection, space_id, *part)
                )
        return [row[0] for row in rows], {
            k: [row[i] for row in rows] for i, k in enumerate(keys, 1)
        }

    def metadata_seq(self, collection: str) -> int:
        """The last metadata_changes seq of a collection (0 before any): read it before
        `field_values`, and a later `field_values(changed_after=it)` misses no change."""
        row = (
            self._reader()
            .execute("SELECT max(seq) FROM metadata_changes WHERE collection=?", (collection,))
            .fetchone()
        )
        return int(row[0] or 0)

    # -- lexical (storage/lexical.py) ------------------------------------------------------
    def lexical_search(
        self, collection: str, space_id: str, text: str, k: int, flt: dict[str, Any] | None = None,
        total: lexical.LexicalStats | None = None,
    ) -> tuple[list[int], list[float]]:  # fmt: skip
        """bm25 over the space's chunk text: chunk ids and scores (higher is better); `total`:
        scored with the statistics of every store the collection is split over."""
        return lexical.search(self._reader(), collection, space_id, text, k, flt, total)

    def lexical_stats(self, text: str) -> lexical.LexicalStats:
        """What bm25 reads from this store for a query of `text` (storage/lexical.py)."""
        return lexical.stats(self._reader(), text)

    def lexical_check(self) -> None:
        """Raise sqlite3.DatabaseError if the lexical index disagrees with the chunks."""
        with self._tx() as c:
            lexical.integrity_check(c)


def vector_chunks(d: DocumentRow) -> DocumentChunks:
    """A bring-your-own-vector document as chunks: one chunk carrying its (already validated)
    vector, hashed as the document is; none when the row carries no vector."""
    if d.vector is None:
        return DocumentChunks(d.id, d.content_hash, [])
    row = ChunkRow(0, d.text, 0, len(d.text), 0, d.content_hash, d.vector)
    return DocumentChunks(d.id, d.content_hash, [row])


def _lexical_settings(c: sqlite3.Connection, collection: str) -> tuple[bool, tuple[str, ...]]:
    """Whether a collection's chunks go into the lexical index, and its title fields."""
    row = c.execute("SELECT config FROM collections WHERE name=?", (collection,)).fetchone()
    if row is None:
        return True, ()
    config = CollectionConfig.from_json(orjson.loads(row[0]))
    return config.lexical, config.lexical_fields


def _collection(row: tuple[Any, ...]) -> CollectionRecord:
    config = CollectionConfig.from_json(orjson.loads(row[1]))
    return CollectionRecord(row[0], config, row[2], row[3])


def _to_arrays(ids: list[int], blobs: list[bytes], dim: int) -> tuple[np.ndarray, np.ndarray]:
    if not ids:
        return np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32)
    vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dim)
    return np.asarray(ids, dtype=np.int64), vecs.copy()
