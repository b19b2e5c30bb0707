"""Durable file writes: fsync of files and directories, atomic replace of a file, atomic
creation of a directory. Used by every layer that persists (index saves, store snapshots), so
there is one way to do it."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


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


@contextmanager
def durable_file(path: Path) -> Iterator[BinaryIO]:
    """Open `path` for writing; flush and fsync it when the block ends without an error (the
    caller fsyncs the directory)."""
    with open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (the caller fsyncs the directory)."""
    with durable_file(path) as f:
        f.write(data)


def atomic_write(path: Path, data: bytes) -> None:
    """Replace `path` with `data` so a crash leaves the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    write_durably(tmp, data)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def write_dir_atomically(path: Path, fill: Callable[[Path], None], replace: bool = False) -> None:
    """Create directory `path` whole or not at all: `fill(tmp)` writes (and fsyncs) the files of
    a fresh temp sibling, which is then fsynced and renamed to `path`. A failure removes the temp
    directory. An existing `path` raises FileExistsError, unless `replace` (then it is removed
    just before the rename: callers that replace point at the directory through another atomic
    write, as snapshots do with CURRENT)."""
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"directory {path} already exists; write into a new path")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        fill(tmp)
        fsync_dir(tmp)
        if replace and path.exists():
            shutil.rmtree(path)
        os.rename(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
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
