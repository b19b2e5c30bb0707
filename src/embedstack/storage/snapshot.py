"""Atomic snapshot directories: write into a temp dir, fsync, rename, then flip CURRENT."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from embedstack.fsutil import atomic_write, write_dir_atomically

MANIFEST = "manifest.json"
CURRENT = "CURRENT"


def write_snapshot(
    parent: Path, name: str, write: Callable[[Path], None], manifest: dict[str, Any]
) -> Path:
    """`write(dir)` fills a fresh directory; the manifest is added; CURRENT then names it.

    A crash at any point leaves either the previous snapshot or the new one current, never a
    half-written one. Older snapshots are removed after the flip.
    """

    def fill(tmp: Path) -> None:
        write(tmp / "data")
        atomic_write(tmp / MANIFEST, orjson.dumps(manifest))

    final = parent / name
    write_dir_atomically(final, fill, replace=True)
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
