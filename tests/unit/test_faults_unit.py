"""Fault handling in process: snapshot checksums, full-disk errors, backups."""

from __future__ import annotations

import errno
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from embedstack.errors import InsufficientStorage, InvalidInput
from embedstack.fsutil import storage_failure
from embedstack.index.exact import ExactIndex
from embedstack.index.factory import load_index
from embedstack.serving.app import status_of
from embedstack.storage.backup import backup, integrity_check, restore, verify_backup
from embedstack.storage.snapshot import read_snapshot, verify_snapshot, write_snapshot
from embedstack.storage.store import Store


def _snapshot(parent: Path, n: int) -> None:
    index = ExactIndex(8, "cosine")
    rng = np.random.default_rng(n)
    index.add(np.arange(n, dtype=np.int64), rng.standard_normal((n, 8)).astype(np.float32))
    write_snapshot(parent, f"snap-{n}", index.save, {"seq": n, "count": n})


def test_snapshot_checksums_catch_flipped_and_truncated_files(tmp_path: Path) -> None:
    _snapshot(tmp_path, 50)
    found = read_snapshot(tmp_path)
    assert found is not None
    data, manifest = found
    assert load_index(data).count() == 50 and manifest["files"]
    assert verify_snapshot(data, manifest) == []
    biggest = max(data.iterdir(), key=lambda p: p.stat().st_size)
    raw = bytearray(biggest.read_bytes())
    raw[-5] ^= 0x01
    biggest.write_bytes(bytes(raw))
    assert "does not match its checksum" in verify_snapshot(data, manifest)[0]
    assert read_snapshot(tmp_path) is None  # the caller rebuilds from the store
    biggest.write_bytes(bytes(raw[:10]))
    assert "bytes, the manifest says" in verify_snapshot(data, manifest)[0]
    _snapshot(tmp_path, 60)  # a new snapshot replaces the damaged one
    found = read_snapshot(tmp_path)
    assert found is not None and found[1]["seq"] == 60


def test_full_disk_errors_become_insufficient_storage() -> None:
    for exc in (
        sqlite3.OperationalError("database or disk is full"),
        sqlite3.OperationalError("disk I/O error"),
        OSError(errno.ENOSPC, "No space left on device"),
        OSError(errno.EFBIG, "File too large"),
    ):
        found = storage_failure(exc, "the store")
        assert isinstance(found, InsufficientStorage) and "full" in found.message
        assert status_of(found) == 507
    assert storage_failure(sqlite3.OperationalError("no such table: x"), "the store") is None
    assert storage_failure(OSError(errno.EACCES, "denied"), "the store") is None


def test_backup_restore_and_a_damaged_backup(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = Store(data / "store.db")
    store.close()
    _snapshot(data / "indexes" / "kb" / "sp_x", 40)
    manifest = backup(data, tmp_path / "bk")
    assert "store.db" in manifest["files"] and not manifest["snapshots_skipped"]
    assert any(rel.startswith("indexes/kb/sp_x/snap-40/") for rel in manifest["files"])
    restored = restore(tmp_path / "bk", tmp_path / "new")
    assert restored["leases_released"] == 0
    assert integrity_check(tmp_path / "new" / "store.db") == []
    found = read_snapshot(tmp_path / "new" / "indexes" / "kb" / "sp_x")
    assert found is not None and load_index(found[0]).count() == 40
    with pytest.raises(Exception, match="not empty"):
        restore(tmp_path / "bk", tmp_path / "new")
    (tmp_path / "bk" / "store.db").write_bytes(b"garbage")
    with pytest.raises(InvalidInput, match="damaged"):
        verify_backup(tmp_path / "bk")
