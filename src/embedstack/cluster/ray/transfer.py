"""Shard transfer in bounded pieces: a snapshot of a replica's store sent from one node to
another without ever holding the whole store in memory on either side.

The source (`Outgoing`, owned by its ShardNode) writes a consistent copy of the replica's store
to its own disk (SQLite's online backup, while the replica keeps applying), checksums it
(sha256, read in pieces) and then serves it `piece_bytes` at a time, each piece one actor call
(one Ray object). The receiver (`receive`) appends each piece to a partial file as it comes,
hashing as it goes, and only when the size and checksum match renames it into place and
writes the log position; a mismatch or a source that stops answering leaves no store behind.
Memory on the receiver: one piece (`cluster_transfer_piece_bytes`, 8 MiB by default)."""

from __future__ import annotations

import hashlib
import os
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from embedstack.cluster.replica import ShardReplica
from embedstack.errors import NotFound, Unavailable
from embedstack.fsutil import atomic_write

PIECE_BYTES = 8 << 20
HASH_READ = 1 << 20  # how the source reads its copy to checksum it
STALE_S = 3600.0  # an outgoing snapshot nobody closed (its receiver died) is removed after this


@dataclass(frozen=True)
class _Sending:
    path: Path
    size: int
    at: float


class Outgoing:
    """Snapshots this node is sending, each in its own folder under `root`."""

    def __init__(self, root: Path) -> None:
        self._root = root
        shutil.rmtree(root, ignore_errors=True)  # what a previous process was sending
        root.mkdir(parents=True, exist_ok=True)
        self._open: dict[str, _Sending] = {}
        self._lock = threading.Lock()

    def open(self, replica: ShardReplica) -> dict[str, Any]:
        """Copy `replica`'s store aside: {"id", "size", "sha256", "position"}."""
        self._purge()
        sid = uuid.uuid4().hex
        folder = self._root / sid
        folder.mkdir()
        path = folder / "store.db"
        position = replica.snapshot(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(HASH_READ):
                digest.update(chunk)
        size = path.stat().st_size
        with self._lock:
            self._open[sid] = _Sending(path, size, time.monotonic())
        return {"id": sid, "size": size, "sha256": digest.hexdigest(), "position": position}

    def piece(self, sid: str, offset: int, size: int) -> bytes:
        with self._lock:
            sending = self._open.get(sid)
        if sending is None:
            raise NotFound(f"no snapshot {sid} being sent (closed, or this node restarted)")
        with open(sending.path, "rb") as f:
            f.seek(offset)
            return f.read(size)

    def close(self, sid: str) -> None:
        with self._lock:
            sending = self._open.pop(sid, None)
        if sending is not None:
            shutil.rmtree(sending.path.parent, ignore_errors=True)

    def _purge(self) -> None:
        now = time.monotonic()
        with self._lock:
            stale = [sid for sid, s in self._open.items() if now - s.at > STALE_S]
        for sid in stale:
            self.close(sid)


def receive(
    call: Callable[..., Any], name: str, shard: int, root: Path, piece_bytes: int = PIECE_BYTES
) -> dict[str, Any]:
    """Fetch a snapshot of replica `name`/`shard` through `call(method, *args)` (the source
    node's snapshot_open, snapshot_piece, snapshot_close) into `root`/store.db plus its
    position.json; returns {"position", "bytes", "pieces", "sha256"}. Unavailable (and no
    store.db) when the copy does not match the source's checksum."""
    info = call("snapshot_open", name, shard)
    root.mkdir(parents=True, exist_ok=True)
    partial = root / "store.db.partial"
    digest = hashlib.sha256()
    pieces = 0
    try:
        try:
            with open(partial, "wb") as out:
                for offset in range(0, int(info["size"]), piece_bytes):
                    data: bytes = call("snapshot_piece", info["id"], offset, piece_bytes)
                    if not data:
                        break
                    digest.update(data)
                    out.write(data)
                    pieces += 1
                out.flush()
                os.fsync(out.fileno())
                got = out.tell()
        finally:
            call("snapshot_close", info["id"])
        if got != info["size"] or digest.hexdigest() != info["sha256"]:
            raise Unavailable(
                f"the snapshot of {name}/{shard} arrived damaged ({got} of {info['size']} "
                f"bytes, sha256 {digest.hexdigest()[:12]} for {str(info['sha256'])[:12]}): "
                "not used"
            )
    except BaseException:
        partial.unlink(missing_ok=True)  # nothing of a failed transfer stays behind
        raise
    os.replace(partial, root / "store.db")
    atomic_write(root / "position.json", orjson.dumps({"position": info["position"]}))
    return {"position": info["position"], "bytes": got, "pieces": pieces, "sha256": info["sha256"]}
