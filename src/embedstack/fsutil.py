"""Durable file writes: fsync of files and directories, atomic replace. Used by every layer that
persists (index snapshots, store snapshots), so there is one way to do it."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (the caller fsyncs the directory)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write_durably(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_build(path: Path, build: Callable[[Path], None]) -> None:
    """Replace `path` with the file `build(tmp)` writes at a temporary path beside it, fsynced;
    a crash or a failing build leaves the old file (or none), never a torn one."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        build(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)
