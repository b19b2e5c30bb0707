"""A durable job queue for ingest work: the `Queue` protocol and its SQLite implementation.

Semantics every implementation keeps:

* `lease` hands out the best available job: highest priority first, then creation order. A job
  is available when it is queued and its retry delay has passed, or when it is leased and its
  visibility timeout has expired. Every lease counts as one attempt and gets a fresh lease id.
* A lease stays ours until another worker takes the job over; `extend`, `ack` and `fail` with a
  lease id that is no longer the job's current one change nothing and report it (False/"stale").
* `fail` requeues the job while attempts < max_attempts, otherwise dead-letters it with the error
  kept. A job whose lease expires on its last attempt is dead-lettered by the next `lease` instead
  of being handed out again, so a job that kills its workers cannot loop forever.
* `enqueue` is idempotent on the job id and durable once it has returned.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from embedstack.errors import Conflict, InvalidInput, NotFound, Unavailable
from embedstack.fsutil import storage_failure

JOB_STATUSES: tuple[str, ...] = ("queued", "leased", "done", "dead")
BUSY_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Job:
    """A snapshot of one job. `attempts` counts leases handed out so far."""

    id: str
    payload: dict[str, Any]
    status: str  # "queued" | "leased" | "done" | "dead"
    attempts: int
    max_attempts: int
    lease_id: str | None
    error: str | None
    result: dict[str, Any] | None
    created_at: float
    updated_at: float


@runtime_checkable
class Queue(Protocol):
    """A job queue with leases (visibility timeouts), retries and a dead-letter state."""

    def enqueue(self, payload: dict[str, Any], job_id: str | None = None, priority: int = 0) -> str:
        """Add a job and return its id; an existing `job_id` is returned unchanged."""
        ...

    def lease(self, worker: str, visibility_timeout: float) -> Job | None:
        """Take the best available job for `visibility_timeout` seconds, or None."""
        ...

    def extend(self, job_id: str, lease_id: str, visibility_timeout: float) -> bool:
        """Heartbeat: push the lease's expiry to now + timeout. False if the lease is not ours."""
        ...

    def ack(self, job_id: str, lease_id: str, result: dict[str, Any]) -> bool:
        """Mark the job done with `result`. False (and no change) if the lease is not ours."""
        ...

    def fail(self, job_id: str, lease_id: str, error: str, retry_delay: float = 0.0) -> str:
        """Record a failure; return the new status "queued" or "dead", or "stale"."""
        ...

    def release(self, job_id: str, lease_id: str) -> bool:
        """Give a leased job back unfinished (a worker shutting down): queued and available at
        once, the lease's attempt not counted. False if the lease is not ours."""
        ...

    def get(self, job_id: str) -> Job:
        """Return the job; raise NotFound if there is none with this id."""
        ...

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, with all four statuses present."""
        ...

    def dead_letters(self, limit: int = 100) -> list[Job]:
        """Dead jobs, most recently dead-lettered first."""
        ...

    def purge(self, older_than: float, limit: int = 10_000) -> int:
        """Delete up to `limit` done jobs last updated over `older_than` seconds ago; returns
        how many. Dead jobs stay for inspection and retry."""
        ...

    def retry_dead(self, job_id: str) -> None:
        """Move a dead job back to queued with its attempts reset."""
        ...

    def close(self) -> None:
        """Release resources; the queue must not be used afterwards."""
        ...


def dumps_object(value: dict[str, Any], what: str) -> str:
    """`value` as compact JSON; InvalidInput unless it is a JSON-serializable dict."""
    if not isinstance(value, dict):
        raise InvalidInput(f"{what} must be a JSON object (dict), got {type(value).__name__}")
    try:
        return json.dumps(value, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} must be JSON-serializable: {exc}") from exc


def job_id_for(job_id: str | None, priority: int) -> str:
    """The id of a job being enqueued (a new one for None); InvalidInput for a bad id or a
    priority that is not an integer."""
    if isinstance(priority, bool) or not isinstance(priority, int):
        raise InvalidInput(f"priority must be an integer, got {priority!r}")
    if job_id is None:
        return uuid.uuid4().hex
    if not isinstance(job_id, str) or not job_id:
        raise InvalidInput(f"job_id must be a non-empty string, got {job_id!r}")
    return job_id


def check_timeout(name: str, seconds: float, allow_zero: bool) -> None:
    """InvalidInput unless `seconds` is > 0 (or == 0 where `allow_zero`)."""
    if not (seconds > 0 or (allow_zero and seconds == 0)):
        bound = ">= 0" if allow_zero else "> 0"
        raise InvalidInput(f"{name} must be {bound} seconds, got {seconds!r}")


# Numbered schema migrations: index i holds migration i + 1. Never edit one that has shipped;
# append a new one instead.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE jobs (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            id TEXT NOT NULL UNIQUE,
            payload TEXT NOT NULL,
            status TEXT NOT NULL
                CHECK (status IN ('queued', 'leased', 'done', 'dead')),
            priority INTEGER NOT NULL DEFAULT 0,
            attempts INTEGER NOT NULL DEFAULT 0,
            max_attempts INTEGER NOT NULL,
            lease_id TEXT,
            leased_by TEXT,
            available_at REAL NOT NULL,
            error TEXT,
            result TEXT,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL
        )
        """,
        "CREATE INDEX jobs_status_priority_available ON jobs (status, priority, available_at)",
    ),
    # Lets `lease` read the head of each status in (priority desc, creation) order without
    # sorting every available row.
    ("CREATE INDEX jobs_status_order ON jobs (status, priority DESC, seq, available_at)",),
)

_JOB_COLUMNS = (
    "id, payload, status, attempts, max_attempts, lease_id, error, result, created_at, updated_at"
)


class _Handle:
    """One SQLite connection and the process that opened it (weak-referenceable)."""

    __slots__ = ("__weakref__", "conn", "pid")

    def __init__(self, conn: sqlite3.Connection, pid: int) -> None:
        self.conn = conn
        self.pid = pid


class SqliteQueue:
    """`Queue` on its own SQLite file (WAL, synchronous=FULL), shared safely by threads and
    processes. Each thread gets its own connection; writes that read-then-modify run in
    `BEGIN IMMEDIATE` transactions so two workers never lease the same job."""

    def __init__(
        self,
        path: Path,
        max_attempts: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be at least 1, got {max_attempts}")
        self.path = Path(path)
        self.max_attempts = max_attempts
        self._clock = clock
        self._local = threading.local()
        self._handles: weakref.WeakSet[_Handle] = weakref.WeakSet()
        self._forked: list[_Handle] = []  # connections inherited over fork(), never touched
        self._lock = threading.Lock()
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._migrate()

    # -- connections -------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise Unavailable(f"queue {self.path} is closed; open a new SqliteQueue")
        handle: _Handle | None = getattr(self._local, "handle", None)
        pid = os.getpid()
        if handle is not None and handle.pid == pid:
            return handle.conn
        if handle is not None:  # inherited through fork(): keep it alive but never use it
            with self._lock:
                self._forked.append(handle)
        handle = _Handle(self._connect(), pid)
        self._local.handle = handle
        with self._lock:
            self._handles.add(handle)
        return handle.conn

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=BUSY_TIMEOUT_S,
                isolation_level=None,  # we issue BEGIN/COMMIT ourselves
                check_same_thread=False,  # only so close() can close every thread's connection
            )
            conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            raise Unavailable(f"cannot open queue database {self.path}: {exc}") from exc
        if str(mode).lower() != "wal":
            conn.close()
            raise Unavailable(
                f"queue database {self.path} could not be switched to WAL mode (got {mode!r}); "
                "put it on a local filesystem"
            )
        return conn

    @contextmanager
    def _immediate(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds SQLite's write lock from its first statement."""
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise Unavailable(
                f"queue database {self.path} stayed locked for over {BUSY_TIMEOUT_S:g} s: {exc}"
            ) from exc
        try:
            yield conn
            conn.execute("COMMIT")
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            full = storage_failure(exc, f"queue database {self.path}")
            if full is not None:
                raise full from exc
            raise

    @contextmanager
    def _storage_errors(self) -> Iterator[None]:
        """A write refused because the disk is full is InsufficientStorage (nothing written)."""
        try:
            yield
        except sqlite3.Error as exc:
            full = storage_failure(exc, f"queue database {self.path}")
            if full is None:
                raise
            raise full from exc

    def _migrate(self) -> None:
        with self._immediate() as conn:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_version "
                "(version INTEGER PRIMARY KEY, applied_at REAL NOT NULL)"
            )
            current = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()[0] or 0
            if current > len(_MIGRATIONS):
                raise Unavailable(
                    f"queue database {self.path} has schema version {current}, newer than the "
                    f"{len(_MIGRATIONS)} this embedstack knows; upgrade embedstack"
                )
            for version in range(current + 1, len(_MIGRATIONS) + 1):
                for statement in _MIGRATIONS[version - 1]:
                    conn.execute(statement)
                conn.execute(
                    "INSERT INTO schema_version (version, applied_at) VALUES (?, ?)",
                    (version, self._clock()),
                )

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _job(row: tuple[Any, ...]) -> Job:
        return Job(
            id=row[0],
            payload=json.loads(row[1]),
            status=row[2],
            attempts=row[3],
            max_attempts=row[4],
            lease_id=row[5],
            error=row[6],
            result=None if row[7] is None else json.loads(row[7]),
            created_at=row[8],
            updated_at=row[9],
        )

    # -- Queue -------------------------------------------------------------------------------

    def enqueue(self, payload: dict[str, Any], job_id: str | None = None, priority: int = 0) -> str:
        """Add a job and return its id; an existing `job_id` is returned unchanged."""
        job_id = job_id_for(job_id, priority)
        body = dumps_object(payload, "payload")
        now = self._clock()
        # One autocommit statement: atomic, and fsynced (synchronous=FULL) before it returns.
        with self._storage_errors():
            self._conn().execute(
                "INSERT OR IGNORE INTO jobs (id, payload, status, priority, attempts,"
                " max_attempts, available_at, created_at, updated_at)"
                " VALUES (?, ?, 'queued', ?, 0, ?, ?, ?, ?)",
                (job_id, body, priority, self.max_attempts, now, now, now),
            )
        return job_id

    def lease(self, worker: str, visibility_timeout: float) -> Job | None:
        """Take the best available job for `visibility_timeout` seconds, or None."""
        check_timeout("visibility_timeout", visibility_timeout, allow_zero=False)
        with self._immediate() as conn:
            now = self._clock()
            while True:
                candidates = [
                    row
                    for status in ("queued", "leased")
                    for row in conn.execute(
                        "SELECT seq, priority, status, attempts, max_attempts, leased_by FROM jobs"
                        " WHERE status = ? AND available_at <= ?"
                        " ORDER BY priority DESC, seq ASC LIMIT 1",
                        (status, now),
                    )
                ]
                if not candidates:
                    return None
                seq, _, status, attempts, max_attempts, leased_by = min(
                    candidates, key=lambda r: (-r[1], r[0])
                )
                if status == "leased" and attempts >= max_attempts:
                    conn.execute(
                        "UPDATE jobs SET status = 'dead', lease_id = NULL, error = ?,"
                        " updated_at = ? WHERE seq = ?",
                        (
                            f"visibility timeout expired on attempt {attempts} of {max_attempts}"
                            f" (worker {leased_by!r}) without ack or fail",
                            now,
                            seq,
                        ),
                    )
                    continue
                conn.execute(
                    "UPDATE jobs SET status = 'leased', attempts = attempts + 1, lease_id = ?,"
                    " leased_by = ?, available_at = ?, updated_at = ? WHERE seq = ?",
                    (uuid.uuid4().hex, worker, now + visibility_timeout, now, seq),
                )
                row = conn.execute(
                    f"SELECT {_JOB_COLUMNS} FROM jobs WHERE seq = ?", (seq,)
                ).fetchone()
                return self._job(row)

    def extend(self, job_id: str, lease_id: str, visibility_timeout: float) -> bool:
        """Heartbeat: push the lease's expiry to now + timeout. False if the lease is not ours."""
        check_timeout("visibility_timeout", visibility_timeout, allow_zero=False)
        now = self._clock()
        cur = self._conn().execute(
            "UPDATE jobs SET available_at = ?, updated_at = ?"
            " WHERE id = ? AND lease_id = ? AND status = 'leased'",
            (now + visibility_timeout, now, job_id, lease_id),
        )
        return cur.rowcount == 1

    def ack(self, job_id: str, lease_id: str, result: dict[str, Any]) -> bool:
        """Mark the job done with `result`. False (and no change) if the lease is not ours."""
        body = dumps_object(result, "result")
        with self._immediate() as conn:
            cur = conn.execute(
                "UPDATE jobs SET status = 'done', result = ?, lease_id = NULL, updated_at = ?"
                " WHERE id = ? AND lease_id = ? AND status = 'leased'",
                (body, self._clock(), job_id, lease_id),
            )
            return cur.rowcount == 1

    def fail(self, job_id: str, lease_id: str, error: str, retry_delay: float = 0.0) -> str:
        """Record a failure; return the new status "queued" or "dead", or "stale"."""
        check_timeout("retry_delay", retry_delay, allow_zero=True)
        with self._immediate() as conn:
            row = conn.execute(
                "SELECT seq, attempts, max_attempts FROM jobs"
                " WHERE id = ? AND lease_id = ? AND status = 'leased'",
                (job_id, lease_id),
            ).fetchone()
            if row is None:
                return "stale"
            seq, attempts, max_attempts = row
            now = self._clock()
            status = "queued" if attempts < max_attempts else "dead"
            conn.execute(
                "UPDATE jobs SET status = ?, error = ?, lease_id = NULL, available_at = ?,"
                " updated_at = ? WHERE seq = ?",
                (status, str(error), now + retry_delay, now, seq),
            )
            return status

    def release(self, job_id: str, lease_id: str) -> bool:
        """Give a leased job back unfinished: queued, available now, its attempt not counted."""
        with self._immediate() as conn:
            now = self._clock()
            cur = conn.execute(
                "UPDATE jobs SET status = 'queued', attempts = max(0, attempts - 1),"
                " lease_id = NULL, available_at = ?, updated_at = ?"
                " WHERE id = ? AND lease_id = ? AND status = 'leased'",
                (now, now, job_id, lease_id),
            )
            return cur.rowcount == 1

    def get(self, job_id: str) -> Job:
        """Return the job; raise NotFound if there is none with this id."""
        row = (
            self._conn()
            .execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"job {job_id!r} not found in queue {self.path}")
        return self._job(row)

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, with all four statuses present."""
        counts = dict.fromkeys(JOB_STATUSES, 0)
        for status, n in self._conn().execute("SELECT status, COUNT(*) FROM jobs GROUP BY status"):
            counts[status] = n
        return counts

    def oldest_ages(self) -> dict[str, float]:
        """Seconds since the oldest queued job was created and the oldest leased job was last
        updated (leased or extended); 0 when there is none."""
        now = self._clock()
        out = {}
        for status, column in (("queued", "created_at"), ("leased", "updated_at")):
            row = (
                self._conn()
                .execute(f"SELECT MIN({column}) FROM jobs WHERE status = ?", (status,))
                .fetchone()
            )
            out[status] = max(0.0, now - row[0]) if row and row[0] is not None else 0.0
        return out

    def dead_letters(self, limit: int = 100) -> list[Job]:
        """Dead jobs, most recently dead-lettered first."""
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        rows = self._conn().execute(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status = 'dead'"
            " ORDER BY updated_at DESC, seq DESC LIMIT ?",
            (limit,),
        )
        return [self._job(row) for row in rows]

    def purge(self, older_than: float, limit: int = 10_000) -> int:
        """Delete up to `limit` done jobs last updated over `older_than` seconds ago; returns
        how many. Dead jobs stay for inspection and retry."""
        check_timeout("older_than", older_than, allow_zero=True)
        cutoff = self._clock() - older_than
        with self._immediate() as conn:
            cur = conn.execute(
                "DELETE FROM jobs WHERE seq IN (SELECT seq FROM jobs WHERE status = 'done'"
                " AND updated_at < ? LIMIT ?)",
                (cutoff, limit),
            )
            return int(cur.rowcount)

    def retry_dead(self, job_id: str) -> None:
        """Move a dead job back to queued with its attempts reset (and its error cleared)."""
        with self._immediate() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                raise NotFound(f"job {job_id!r} not found in queue {self.path}")
            if row[0] != "dead":
                raise Conflict(f"job {job_id!r} is {row[0]}, not dead; only dead jobs can retry")
            now = self._clock()
            conn.execute(
                "UPDATE jobs SET status = 'queued', attempts = 0, error = NULL, lease_id = NULL,"
                " leased_by = NULL, available_at = ?, updated_at = ? WHERE id = ?",
                (now, now, job_id),
            )

    def close(self) -> None:
        """Close every connection this process opened; later calls raise Unavailable."""
        with self._lock:
            self._closed = True
            pid = os.getpid()
            for handle in list(self._handles):
                if handle.pid == pid:
                    handle.conn.close()
            self._handles = weakref.WeakSet()

    def __enter__(self) -> SqliteQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
