"""A PostgreSQL table as a source: polling on an updated-at column, deletions by id sets.

postgresql://USER@HOST:PORT/DB?table=T&updated=updated_at (any libpq URI; `table` and
`updated` are ours and taken out). Rows come in (updated_at, id) order after the position,
which is a small JSON file written atomically after their documents are durable, so a restart
goes on where the last accepted batch ended. The template's id field is the id column.

Deletions: once a poll finds nothing new, the table's ids are compared with the ids of the
collection's documents from this table (metadata "source"); the ones gone from the table are
deleted. That catches hard DELETEs without asking the table for a deleted flag or a tombstone
table, at the cost of one id scan per check (every `deletes_every` seconds while idle).

The updated-at column must be a timestamp that grows with each change (a trigger setting it
to clock_timestamp()). A row stamped earlier than the position but committed later (a long
transaction) is missed by polling: that is the price of polling over logical decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import orjson

from embedstack.errors import InvalidInput, Unavailable
from embedstack.fsutil import atomic_write
from embedstack.ingest.streams import Batch

IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.")


class PostgresSource:
    def __init__(
        self,
        url: str,
        id_column: str,
        state: Path,
        known_ids: Callable[[str], list[str]],
        deletes_every: float = 5.0,
    ) -> None:
        import psycopg
        from psycopg import sql

        parts = urlsplit(url)
        params = dict(parse_qsl(parts.query))
        table, updated = params.pop("table", ""), params.pop("updated", "updated_at")
        if not table or not set(table) <= IDENT_CHARS or not set(updated) <= IDENT_CHARS:
            raise InvalidInput(
                f"--from {url!r} needs ?table=NAME (and optionally &updated=COLUMN, default "
                "updated_at): plain identifiers"
            )
        dsn = urlunsplit((parts.scheme, parts.netloc, parts.path, urlencode(params), ""))
        self.name = f"postgresql:{table}"
        self._state = state
        self._known_ids = known_ids
        self._deletes_every = deletes_every
        try:
            self._conn = psycopg.connect(dsn, autocommit=True)
        except psycopg.Error as exc:
            where = parts.netloc or dsn
            raise Unavailable(f"postgresql at {where} did not answer ({exc})") from exc
        tbl = sql.Identifier(*table.split("."))
        upd, ident = sql.Identifier(updated), sql.Identifier(id_column)
        self._rows = sql.SQL(
            "SELECT * FROM {t} WHERE {u} > %(ts)s OR ({u} = %(ts)s AND {i}::text > %(id)s) "
            "ORDER BY {u}, {i}::text LIMIT %(n)s"
        ).format(t=tbl, u=upd, i=ident)
        self._ids = sql.SQL("SELECT {i}::text FROM {t}").format(t=tbl, i=ident)
        self._updated, self._id_column = updated, id_column
        saved = orjson.loads(state.read_bytes()) if state.exists() else {}
        self._pos: tuple[datetime | None, str] = (
            datetime.fromisoformat(saved["updated"]) if saved.get("updated") else None,
            str(saved.get("id", "")),
        )
        self._next = self._pos
        self._last_check = 0.0

    def poll(self, limit: int, timeout: float) -> Batch:
        import psycopg
        from psycopg.rows import dict_row

        ts, last_id = self._pos
        if ts is None:
            ts, last_id = datetime.min.replace(year=1), ""
        try:
            with self._conn.cursor(row_factory=dict_row) as cur:
                rows = cur.execute(self._rows, {"ts": ts, "id": last_id, "n": limit}).fetchall()
        except psycopg.Error as exc:
            raise Unavailable(f"reading {self.name}: {exc}") from exc
        out = Batch()
        for row in rows:
            where = f"{self.name} id={row.get(self._id_column)!s}"
            out.records.append((where, row))
        if rows:
            last = rows[-1]
            self._next = (last[self._updated], str(last[self._id_column]))
            return out
        now = time.monotonic()
        if now - self._last_check >= self._deletes_every:
            self._last_check = now
            with self._conn.cursor() as cur:
                present = {r[0] for r in cur.execute(self._ids).fetchall()}
            out.deleted = [i for i in self._known_ids(self.name) if i not in present]
            if out.deleted:
                return out
        time.sleep(min(timeout, 0.2))
        return out

    def commit(self) -> None:
        if self._next == self._pos:
            return
        ts, last_id = self._next
        payload = {"updated": ts.isoformat() if isinstance(ts, datetime) else None, "id": last_id}
        self._state.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._state, orjson.dumps(payload))
        self._pos = self._next

    def close(self) -> None:
        self._conn.close()
