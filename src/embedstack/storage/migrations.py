"""Numbered schema migrations for the store. Append only; never edit a shipped migration."""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: the initial schema
    """
    CREATE TABLE collections(
        name TEXT PRIMARY KEY,
        config TEXT NOT NULL,
        space_id TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE documents(
        collection TEXT NOT NULL,
        id TEXT NOT NULL,
        text TEXT NOT NULL,
        metadata TEXT NOT NULL,
        vector BLOB,
        content_hash TEXT NOT NULL,
        indexed_hash TEXT,
        updated_at REAL NOT NULL,
        PRIMARY KEY(collection, id)
    );
    CREATE TABLE chunks(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        collection TEXT NOT NULL,
        space_id TEXT NOT NULL,
        document_id TEXT NOT NULL,
        ordinal INTEGER NOT NULL,
        text TEXT NOT NULL,
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        token_count INTEGER NOT NULL,
        hash TEXT NOT NULL,
        vector BLOB NOT NULL
    );
    CREATE INDEX chunks_by_document ON chunks(collection, space_id, document_id, ordinal);
    CREATE INDEX chunks_by_hash ON chunks(collection, space_id, hash);
    CREATE TABLE changes(
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        collection TEXT NOT NULL,
        space_id TEXT NOT NULL,
        chunk_id INTEGER NOT NULL,
        op INTEGER NOT NULL
    );
    CREATE INDEX changes_by_space ON changes(collection, space_id, seq);
    """,
)
