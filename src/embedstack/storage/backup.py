"""Online backups of a data directory, their restore, and SQLite integrity checks.

A backup is consistent while the server keeps writing:
1. index snapshots are copied first (each checked against its manifest's checksums; one that a
   newer snapshot replaced mid-copy is copied again), so every snapshot's seq is at most the
   store's in the backup and the restored index catches up by replaying the change log;
2. the store, then the queue, are copied with SQLite's online backup API (one read transaction
   each: a consistent image, not a torn file copy). Store before queue: every upgrade's jobs
   are in the copied queue; documents whose job is not (acknowledged between the two copies
   cannot be: their job was enqueued before the 202) are re-enqueued at start-up anyway.
`backup.json` records every file's size and SHA-256; restore checks them, copies into a fresh
data directory, and gives leased jobs back to the queue (their workers are gone).
"""

from __future__ import annotations

import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import orjson

from embedstack.errors import Conflict, InvalidInput, NotFound
from embedstack.fsutil import atomic_write, fsync_dir, fsync_file
from embedstack.storage.feedback import FEEDBACK
from embedstack.storage.snapshot import CURRENT, current_snapshot, file_digests, verify_snapshot

STORE = "store.db"
QUEUE = "queue.db"
INDEXES = "indexes"
BACKUP_MANIFEST = "backup.json"
FORMAT = 1


def integrity_check(path: Path) -> list[str]:
    """PRAGMA integrity_check of a SQLite file, read-only: [] when it is sound."""
    if not path.exists():
        return [f"{path} does not exist"]
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30.0)
        try:
            rows = [str(r[0]) for r in conn.execute("PRAGMA integrity_check")]
        finally:
            conn.close()
    except sqlite3.Error as exc:
        return [f"{path}: {exc}"]
    return [] if rows == ["ok"] else [f"{path}: {r}" for r in rows[:20]]


def sqlite_copy(source: Path, target: Path) -> None:
    """A consistent copy of a live SQLite database (WAL included) through the backup API."""
    src = sqlite3.connect(f"file:{source}?mode=ro", uri=True, timeout=30.0)
    dst = sqlite3.connect(target)
    try:
        src.execute("PRAGMA busy_timeout=30000")
        src.backup(dst)  # pages=-1: one step, under one read transaction
        dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    finally:
        dst.close()
        src.close()
    fsync_file(target)


def _copy_snapshots(data: Path, target: Path, attempts: int = 5) -> list[str]:
    """Copy each index's current snapshot; returns the indexes whose snapshot was skipped."""
    skipped = []
    root = data / INDEXES
    for current in sorted(root.glob(f"*/*/{CURRENT}")) if root.is_dir() else []:
        parent = current.parent
        rel = parent.relative_to(data)
        for _ in range(attempts):
            found = current_snapshot(parent)
            if found is None:
                break
            snap, manifest = found
            dest = target / rel / snap.name
            shutil.rmtree(dest, ignore_errors=True)
            try:
                shutil.copytree(snap, dest)
            except (OSError, shutil.Error):
                continue  # replaced by a newer snapshot while we copied: take that one
            if not verify_snapshot(dest / "data", manifest):
                atomic_write(target / rel / CURRENT, snap.name.encode())
                break
        else:
            skipped.append(str(rel))
            shutil.rmtree(target / rel, ignore_errors=True)
    return skipped


def backup(data: Path, target: Path) -> dict[str, Any]:
    """Copy the data directory `data` (in use or not) into the new directory `target`."""
    data, target = Path(data), Path(target)
    if not (data / STORE).exists():
        raise NotFound(f"{data} holds no store ({STORE}): is it an embedstack data directory?")
    if target.exists() and any(target.iterdir()):
        raise Conflict(f"{target} is not empty: back up into a new directory")
    target.mkdir(parents=True, exist_ok=True)
    started = time.time()
    skipped = _copy_snapshots(data, target)
    sqlite_copy(data / STORE, target / STORE)
    for db in (QUEUE, FEEDBACK):
        if (data / db).exists():
            sqlite_copy(data / db, target / db)
    manifest = {
        "format": FORMAT,
        "source": str(data.resolve()),
        "started_at": started,
        "finished_at": time.time(),
        "snapshots_skipped": skipped,
        "files": file_digests(target),
    }
    atomic_write(target / BACKUP_MANIFEST, orjson.dumps(manifest, option=orjson.OPT_INDENT_2))
    fsync_dir(target)
    return manifest


def verify_backup(source: Path) -> dict[str, Any]:
    """The backup's manifest, after checking every file against it (InvalidInput if not)."""
    try:
        manifest: dict[str, Any] = orjson.loads((Path(source) / BACKUP_MANIFEST).read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"{source} is not a readable embedstack backup: {exc}") from exc
    found = file_digests(Path(source))
    found.pop(BACKUP_MANIFEST, None)
    wanted = manifest.get("files", {})
    bad = sorted(rel for rel in wanted if found.get(rel) != wanted[rel])
    if bad:
        raise InvalidInput(f"backup {source} is damaged: {', '.join(bad[:5])} do not match")
    return manifest


def restore(source: Path, data: Path) -> dict[str, Any]:
    """Bring the backup in `source` up as the fresh data directory `data`."""
    source, data = Path(source), Path(data)
    manifest = verify_backup(source)
    if data.exists() and any(data.iterdir()):
        raise Conflict(f"{data} is not empty: restore into a new data directory")
    data.mkdir(parents=True, exist_ok=True)
    for rel in manifest["files"]:
        dest = data / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source / rel, dest)
        fsync_file(dest)
    for db in (STORE, QUEUE, FEEDBACK):
        problems = integrity_check(data / db) if (data / db).exists() else []
        if problems:
            raise InvalidInput(f"restored {db} fails its integrity check: {problems[0]}")
    released = 0
    if (data / QUEUE).exists():
        conn = sqlite3.connect(data / QUEUE)
        try:
            with conn:
                released = conn.execute(
                    "UPDATE jobs SET status='queued', lease_id=NULL,"
                    " attempts=max(0, attempts-1), available_at=? WHERE status='leased'",
                    (time.time(),),
                ).rowcount
        finally:
            conn.close()
    for path in [data, *(p for p in data.rglob("*") if p.is_dir())]:
        fsync_dir(path)
    return {**manifest, "leases_released": released}
