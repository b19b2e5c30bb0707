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
    # 2: embedding spaces per collection (serving, shadow, previous), aliases, upgrades
    """
    CREATE TABLE spaces(
        collection TEXT NOT NULL,
        space_id TEXT NOT NULL,
        model TEXT,
        model_spec TEXT,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        PRIMARY KEY(collection, space_id)
    );
    INSERT INTO spaces(collection, space_id, model, model_spec, state, created_at, updated_at)
        SELECT name, space_id, json_extract(config, '$.model'),
               json_extract(config, '$.model_spec'), 'serving', created_at, created_at
        FROM collections;
    CREATE TABLE aliases(
        alias TEXT PRIMARY KEY,
        collection TEXT NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE TABLE upgrades(
        id TEXT PRIMARY KEY,
        collection TEXT NOT NULL,
        from_space TEXT NOT NULL,
        to_space TEXT NOT NULL,
        model TEXT NOT NULL,
        state TEXT NOT NULL,
        total INTEGER NOT NULL,
        done INTEGER NOT NULL,
        options TEXT NOT NULL,
        report TEXT,
        error TEXT,
        started_at REAL NOT NULL,
        updated_at REAL NOT NULL
    );
    CREATE INDEX upgrades_by_collection ON upgrades(collection, started_at);
    """,
    # access control (serving/auth.py): API keys (salted hashes only) and the audit log. A
    # tenant's collections and aliases are stored under "<tenant>:<name>"; existing rows keep
    # their plain names and belong to the tenant "default".
    """
    CREATE TABLE api_keys(
        prefix TEXT PRIMARY KEY,
        tenant TEXT NOT NULL,
        scopes TEXT NOT NULL,
        collections TEXT,
        rate_rps REAL,
        rate_texts REAL,
        name TEXT,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL,
        salt BLOB NOT NULL,
        hash BLOB NOT NULL
    );
    CREATE INDEX api_keys_by_tenant ON api_keys(tenant, created_at);
    CREATE TABLE audit(
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at REAL NOT NULL,
        key_prefix TEXT,
        tenant TEXT,
        action TEXT NOT NULL,
        collection TEXT,
        status INTEGER,
        detail TEXT NOT NULL
    );
    CREATE INDEX audit_by_tenant ON audit(tenant, id);
    """,
    # 4: the lexical index (storage/lexical.py): FTS5 over chunk text, external content on chunks,
    # kept in step with every chunk insert and delete by triggers (so in the same transaction)
    """
    CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
        text, content='chunks', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER IF NOT EXISTS chunks_fts_insert AFTER INSERT ON chunks BEGIN
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    CREATE TRIGGER IF NOT EXISTS chunks_fts_delete AFTER DELETE ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
    END;
    CREATE TRIGGER IF NOT EXISTS chunks_fts_update AFTER UPDATE OF text ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
        INSERT INTO chunks_fts(rowid, text) VALUES (new.id, new.text);
    END;
    INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild');
    """,
    # 5: the lexical index per collection: `chunks.lexical` (0 for a collection created with
    # lexical off: its chunks get no FTS rows and fire no FTS work) and a `title` column (the
    # collection's lexical_fields from the document metadata, bm25-weighted); the FTS table
    # reads its content from the view of the lexical chunks, so a rebuild skips the others
    """
    DROP TRIGGER IF EXISTS chunks_fts_insert;
    DROP TRIGGER IF EXISTS chunks_fts_delete;
    DROP TRIGGER IF EXISTS chunks_fts_update;
    DROP TABLE IF EXISTS chunks_fts;
    ALTER TABLE chunks ADD COLUMN lexical INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE chunks ADD COLUMN title TEXT NOT NULL DEFAULT '';
    UPDATE chunks SET title = coalesce((
        SELECT CAST(json_extract(d.metadata, '$.title') AS TEXT) FROM documents d
        WHERE d.collection = chunks.collection AND d.id = chunks.document_id), '');
    CREATE VIEW chunks_lexical AS SELECT id, text, title FROM chunks WHERE lexical;
    CREATE VIRTUAL TABLE chunks_fts USING fts5(
        text, title, content='chunks_lexical', content_rowid='id',
        tokenize='porter unicode61 remove_diacritics 2'
    );
    CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks WHEN new.lexical BEGIN
        INSERT INTO chunks_fts(rowid, text, title) VALUES (new.id, new.text, new.title);
    END;
    CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks WHEN old.lexical BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text, title)
            VALUES ('delete', old.id, old.text, old.title);
    END;
    CREATE TRIGGER chunks_fts_update AFTER UPDATE OF text, title, lexical ON chunks BEGIN
        INSERT INTO chunks_fts(chunks_fts, rowid, text, title)
            SELECT 'delete', old.id, old.text, old.title WHERE old.lexical;
        INSERT INTO chunks_fts(rowid, text, title)
            SELECT new.id, new.text, new.title WHERE new.lexical;
    END;
    INSERT INTO chunks_fts(chunks_fts) VALUES ('rebuild');
    """,
    # metadata filters evaluated in memory (index/attributes.py) follow a document whose
    # metadata was replaced while its chunks were kept (no change-log entry): each such
    # document is noted here with a per-collection sequence number, in the same transaction
    """
    CREATE TABLE metadata_changes(
        collection TEXT NOT NULL,
        document_id TEXT NOT NULL,
        seq INTEGER NOT NULL,
        PRIMARY KEY(collection, document_id)
    );
    CREATE INDEX metadata_changes_by_seq ON metadata_changes(collection, seq);
    CREATE TRIGGER documents_metadata_changed AFTER UPDATE OF metadata ON documents
    WHEN old.metadata IS NOT new.metadata BEGIN
        INSERT OR REPLACE INTO metadata_changes(collection, document_id, seq)
            VALUES (new.collection, new.id, 1 + coalesce((SELECT max(seq) FROM metadata_changes
                                                          WHERE collection = new.collection), 0));
    END;
    """,
    # the chunk-hash index holds text chunks only (token_count > 0): it serves re-embedding
    # reuse (Store.vectors_by_hash), which a bring-your-own vector's chunk (no tokens) never
    # meets; keeping those out halves the insert cost of bulk vectors and 1 GB of index at 10M.
    # One scan of the chunks table (with a text chunk index entry each), in the opening
    # transaction: seconds at 1M chunks
    """
    DROP INDEX IF EXISTS chunks_by_hash;
    CREATE INDEX chunks_by_text_hash ON chunks(collection, space_id, hash) WHERE token_count > 0;
    """,
)


def statements(sql: str) -> list[str]:
    """The statements of one migration, split at ';' only where a statement is complete (a
    trigger body holds ';' of its own)."""
    import sqlite3

    out: list[str] = []
    pending = ""
    for part in sql.split(";"):
        pending += part + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n\t;"):
                out.append(pending.strip())
            pending = ""
    if pending.strip(" \n\t;"):
        out.append(pending.strip())
    return out
