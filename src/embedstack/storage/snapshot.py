"""Atomic snapshot directories: write into a temp dir, fsync, rename, then flip CURRENT."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from embedstack.fsutil import atomic_write, fsync_dir

MANIFEST = "manifest.json"
CURRENT = "CURRENT"


def write_snapshot(
    parent: Path, name: str, write: Callable[[Path], None], manifest: dict[str, Any]
) -> Path:
    """`write(dir)` fills a fresh directory; the manifest is added; CURRENT then names it.

    A crash at any point leaves either the previous snapshot or the new one current, never a
    half-written one. Older snapshots are removed after the flip.
    """
    parent.mkdir(parents=True, exist_ok=True)
    tmp = parent / f".tmp-{name}-{uuid.uuid4().hex}"
    write(tmp / "data")
    atomic_write(tmp / MANIFEST, orjson.dumps(manifest))
    fsync_dir(tmp)
    final = parent / name
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    fsync_dir(parent)
    atomic_write(parent / CURRENT, name.encode())
    for old in parent.iterdir():
        if old.name not in (name, CURRENT) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def read_snapshot(parent: Path) -> tuple[Path, dict[str, Any]] | None:
    """(data dir, manifest) of the current snapshot, or None when there is none readable."""
    try:
        name = (parent / CURRENT).read_text().strip()
        snap = parent / name
        manifest: dict[str, Any] = orjson.loads((snap / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    return snap / "data", manifest
