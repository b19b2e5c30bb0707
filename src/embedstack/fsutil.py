"""Durable file writes: fsync of files and directories, atomic replace of a file, atomic
creation of a directory. Used by every layer that persists (index saves, store snapshots), so
there is one way to do it."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from embedstack.errors import InsufficientStorage


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


def storage_failure(exc: BaseException, what: str) -> InsufficientStorage | None:
    """The InsufficientStorage error for a write that failed because the disk (or a file-size
    limit, RLIMIT_FSIZE) is full, or None when `exc` is some other failure. SQLite reports a
    short write as "database or disk is full" and a refused one (EFBIG) as "disk I/O error"."""
    text = str(exc).lower()
    full = isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS
    full = full or "disk is full" in text or "disk i/o error" in text
    if not full:
        return None
    return InsufficientStorage(
        f"{what} could not be written ({exc}): the disk is full or a file-size limit was "
        "reached. Nothing acknowledged was lost and reads keep working; free space and retry"
    )


_FULL_ERRNOS = {errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)}
