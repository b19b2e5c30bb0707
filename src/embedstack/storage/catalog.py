"""Embedding spaces per collection, aliases and upgrade records: the catalog half of the store.

A collection has exactly one serving space (collections.space_id) and at most one shadow (being
back-filled) and one previous (kept for rollback) space. Writes go to every active space.
"""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from embedstack.errors import Conflict, NotFound
from embedstack.types import ModelSpec

ACTIVE_STATES = ("serving", "shadow", "previous")


@dataclass(frozen=True)
class SpaceInfo:
    collection: str
    space_id: str
    model: str | None
    model_spec: ModelSpec | None
    state: str
    created_at: float


@dataclass(frozen=True)
class UpgradeRecord:
    id: str
    collection: str
    from_space: str
    to_space: str
    model: str
    state: str  # backfilling | ready | cut_over | rolled_back | failed | cancelled
    total: int
    done: int
    options: dict[str, Any]
    report: dict[str, Any] | None
    error: str | None
    started_at: float
    updated_at: float


_UPGRADE_COLS = (
    "id, collection, from_space, to_space, model, state, total, done, options, report, error,"
    " started_at, updated_at"
)


def _upgrade(row: tuple[Any, ...]) -> UpgradeRecord:
    report = orjson.loads(row[9]) if row[9] else None
    return UpgradeRecord(row[0], row[1], row[2], row[3], row[4], row[5], row[6], row[7],
                         orjson.loads(row[8]), report, row[10], row[11], row[12])  # fmt: skip


def _spec_json(spec: ModelSpec | None) -> str | None:
    return orjson.dumps(asdict(spec)).decode() if spec else None


class CatalogMixin:
    """Methods of `Store` over the spaces, aliases and upgrades tables."""

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _catalog_tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _reader(self) -> sqlite3.Connection:
        raise NotImplementedError

    # -- spaces -----------------------------------------------------------------------------
    def spaces(self, collection: str, states: tuple[str, ...] = ACTIVE_STATES) -> list[SpaceInfo]:
        marks = ",".join("?" * len(states))
        rows = self._reader().execute(
            "SELECT collection, space_id, model, model_spec, state, created_at FROM spaces"
            f" WHERE collection=? AND state IN ({marks}) ORDER BY created_at",
            (collection, *states),
        )
        return [
            SpaceInfo(
                r[0],
                r[1],
                r[2],
                ModelSpec.from_json(orjson.loads(r[3])) if r[3] else None,
                r[4],
                r[5],
            )
            for r in rows
        ]

    def space(self, collection: str, space_id: str) -> SpaceInfo:
        for s in self.spaces(collection, ("serving", "shadow", "previous", "retired")):
            if s.space_id == space_id:
                return s
        raise NotFound(f"collection {collection!r} has no space {space_id}")

    def add_space(
        self,
        c: sqlite3.Connection,
        collection: str,
        space_id: str,
        model: str | None,
        spec: ModelSpec | None,
        state: str,
    ) -> None:
        now = time.time()
        c.execute(
            "INSERT INTO spaces(collection, space_id, model, model_spec, state, created_at,"
            " updated_at) VALUES (?,?,?,?,?,?,?) ON CONFLICT(collection, space_id) DO UPDATE SET"
            " state=excluded.state, updated_at=excluded.updated_at",
            (collection, space_id, model, _spec_json(spec), state, now, now),
        )  # fmt: skip

    def _set_state(self, c: sqlite3.Connection, collection: str, space_id: str, state: str) -> None:
        c.execute(
            "UPDATE spaces SET state=?, updated_at=? WHERE collection=? AND space_id=?",
            (state, time.time(), collection, space_id),
        )

    def _drop_space_data(self, c: sqlite3.Connection, collection: str, space_id: str) -> None:
        c.execute("DELETE FROM chunks WHERE collection=? AND space_id=?", (collection, space_id))
        c.execute("DELETE FROM changes WHERE collection=? AND space_id=?", (collection, space_id))

    def start_shadow(
        self, collection: str, space_id: str, model: str, spec: ModelSpec,
        total: int, options: dict[str, Any],
    ) -> UpgradeRecord:  # fmt: skip
        """Register a shadow space and its upgrade record in one transaction."""
        with self._catalog_tx() as c:
            row = c.execute(
                "SELECT space_id FROM collections WHERE name=?", (collection,)
            ).fetchone()
            if row is None:
                raise NotFound(f"collection {collection!r} does not exist")
            if row[0] == space_id:
                raise Conflict(f"collection {collection!r} already serves space {space_id}")
            busy = c.execute(
                "SELECT id FROM upgrades WHERE collection=? AND state IN ('backfilling', 'ready')",
                (collection,),
            ).fetchone()
            if busy:
                raise Conflict(
                    f"collection {collection!r} has upgrade {busy[0]} in progress: cut it over "
                    "or cancel it first"
                )
            self.add_space(c, collection, space_id, model, spec, "shadow")
            upgrade_id = uuid.uuid4().hex
            now = time.time()
            c.execute(
                f"INSERT INTO upgrades({_UPGRADE_COLS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (upgrade_id, collection, row[0], space_id, model, "backfilling", total, 0,
                 orjson.dumps(options).decode(), None, None, now, now),
            )  # fmt: skip
        return self.get_upgrade(upgrade_id)

    def cut_over(self, collection: str, to_space: str) -> str:
        """Atomically make `to_space` the serving space. Returns the space it replaced.

        The replaced space becomes 'previous' (kept for rollback, still written to); an older
        'previous' space is retired and its vectors deleted in the same transaction.
        """
        with self._catalog_tx() as c:
            row = c.execute(
                "SELECT space_id FROM collections WHERE name=?", (collection,)
            ).fetchone()
            if row is None:
                raise NotFound(f"collection {collection!r} does not exist")
            old = str(row[0])
            state = c.execute(
                "SELECT state FROM spaces WHERE collection=? AND space_id=?", (collection, to_space)
            ).fetchone()
            if state is None or state[0] not in ("shadow", "previous"):
                raise Conflict(
                    f"space {to_space} of {collection!r} is not a shadow or previous space"
                )
            for (other,) in c.execute(
                "SELECT space_id FROM spaces WHERE collection=? AND state='previous'"
                " AND space_id NOT IN (?, ?)",
                (collection, to_space, old),
            ).fetchall():
                self._set_state(c, collection, other, "retired")
                self._drop_space_data(c, collection, other)
            self._set_state(c, collection, old, "previous")
            self._set_state(c, collection, to_space, "serving")
            c.execute("UPDATE collections SET space_id=? WHERE name=?", (to_space, collection))
        return old

    def retire(self, collection: str, space_id: str) -> None:
        with self._catalog_tx() as c:
            state = c.execute(
                "SELECT state FROM spaces WHERE collection=? AND space_id=?", (collection, space_id)
            ).fetchone()
            if state is None:
                raise NotFound(f"collection {collection!r} has no space {space_id}")
            if state[0] == "serving":
                raise Conflict(f"space {space_id} is serving {collection!r}: it cannot be retired")
            self._set_state(c, collection, space_id, "retired")
            self._drop_space_data(c, collection, space_id)

    # -- upgrades ---------------------------------------------------------------------------
    def get_upgrade(self, upgrade_id: str) -> UpgradeRecord:
        row = (
            self._reader()
            .execute(f"SELECT {_UPGRADE_COLS} FROM upgrades WHERE id=?", (upgrade_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no upgrade {upgrade_id}")
        return _upgrade(row)

    def upgrades(self, collection: str | None = None) -> list[UpgradeRecord]:
        sql = f"SELECT {_UPGRADE_COLS} FROM upgrades"
        args: tuple[Any, ...] = ()
        if collection is not None:
            sql, args = sql + " WHERE collection=?", (collection,)
        return [_upgrade(r) for r in self._reader().execute(sql + " ORDER BY started_at", args)]

    def latest_upgrade(self, collection: str) -> UpgradeRecord | None:
        found = self.upgrades(collection)
        return found[-1] if found else None

    def update_upgrade(self, upgrade_id: str, **fields: Any) -> None:
        allowed = {"state", "report", "error", "total", "done", "options"}
        assert set(fields) <= allowed, fields
        sets = ", ".join(f"{k}=?" for k in fields)
        values = [
            orjson.dumps(v).decode() if k in ("report", "options") else v for k, v in fields.items()
        ]
        with self._tx() as c:
            c.execute(
                f"UPDATE upgrades SET {sets}, updated_at=? WHERE id=?",
                (*values, time.time(), upgrade_id),
            )

    def set_alias(self, alias: str, collection: str) -> None:
        with self._catalog_tx() as c:
            if c.execute("SELECT 1 FROM collections WHERE name=?", (alias,)).fetchone():
                raise Conflict(f"{alias!r} is a collection name: an alias must not hide it")
            if not c.execute("SELECT 1 FROM collections WHERE name=?", (collection,)).fetchone():
                raise NotFound(f"collection {collection!r} does not exist")
            c.execute(
                "INSERT INTO aliases(alias, collection, updated_at) VALUES (?,?,?)"
                " ON CONFLICT(alias) DO UPDATE SET collection=excluded.collection,"
                " updated_at=excluded.updated_at",
                (alias, collection, time.time()),
            )

    def delete_alias(self, alias: str) -> None:
        with self._catalog_tx() as c:
            if c.execute("DELETE FROM aliases WHERE alias=?", (alias,)).rowcount == 0:
                raise NotFound(f"alias {alias!r} does not exist")

    def aliases(self) -> dict[str, str]:
        return dict(self._reader().execute("SELECT alias, collection FROM aliases ORDER BY alias"))

    def resolve(self, name: str) -> str:
        """A collection name, or the collection an alias points to."""
        row = (
            self._reader()
            .execute("SELECT collection FROM aliases WHERE alias=?", (name,))
            .fetchone()
        )
        return str(row[0]) if row else name

    def all_documents(
        self, collection: str, batch: int = 1000, after: str = ""
    ) -> Iterator[list[str]]:
        """Document ids in id order, `batch` at a time, starting after the id `after`."""
        last = after
        while True:
            rows = (
                self._reader()
                .execute(
                    "SELECT id FROM documents WHERE collection=? AND id>? ORDER BY id LIMIT ?",
                    (collection, last, batch),
                )
                .fetchall()
            )
            if not rows:
                return
            last = rows[-1][0]
            yield [r[0] for r in rows]
