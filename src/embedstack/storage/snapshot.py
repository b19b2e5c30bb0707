"""Atomic snapshot directories: write into a temp dir, fsync, rename, then flip CURRENT.

The manifest records the size and SHA-256 of every data file, so a snapshot damaged after it
was written (a torn copy, a bad sector, a truncated file) is detected when it is read: the
reader treats it as absent and the index is rebuilt from the store.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from embedstack.fsutil import atomic_write, write_dir_atomically

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
CURRENT = "CURRENT"
FILES = "files"  # manifest key: {relative path: {"size": bytes, "sha256": hex}}


def file_digests(root: Path) -> dict[str, dict[str, Any]]:
    """{path relative to `root`: {"size", "sha256"}} of every file under `root`."""
    out: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        out[path.relative_to(root).as_posix()] = {
            "size": path.stat().st_size,
            "sha256": digest.hexdigest(),
        }
    return out


def write_snapshot(
    parent: Path, name: str, write: Callable[[Path], None], manifest: dict[str, Any]
) -> Path:
    """`write(dir)` fills a fresh directory; the manifest (with the data files' checksums) is
    added; CURRENT then names it.

    A crash at any point leaves either the previous snapshot or the new one current, never a
    half-written one. Older snapshots are removed after the flip.
    """

    def fill(tmp: Path) -> None:
        write(tmp / "data")
        files = file_digests(tmp / "data")
        atomic_write(tmp / MANIFEST, orjson.dumps({**manifest, FILES: files}))

    final = parent / name
    write_dir_atomically(final, fill, replace=True)
    atomic_write(parent / CURRENT, name.encode())
    for old in parent.iterdir():
        if old.name not in (name, CURRENT) and old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
    return final


def verify_snapshot(data: Path, manifest: dict[str, Any]) -> list[str]:
    """What is wrong with the files of a snapshot against its manifest's checksums (empty when
    they all match; a manifest without checksums cannot be checked and gives one problem)."""
    wanted = manifest.get(FILES)
    if not isinstance(wanted, dict):
        return ["the manifest has no checksums (written by an older embedstack)"]
    problems = []
    found = file_digests(data) if data.is_dir() else {}
    for rel, want in sorted(wanted.items()):
        got = found.get(rel)
        if got is None:
            problems.append(f"{rel} is missing")
        elif got["size"] != want.get("size"):
            problems.append(f"{rel} is {got['size']} bytes, the manifest says {want.get('size')}")
        elif got["sha256"] != want.get("sha256"):
            problems.append(f"{rel} does not match its checksum")
    problems += [f"{rel} is not in the manifest" for rel in sorted(set(found) - set(wanted))]
    return problems


def current_snapshot(parent: Path) -> tuple[Path, dict[str, Any]] | None:
    """(snapshot dir, manifest) that CURRENT names, unverified; None if unreadable."""
    try:
        name = (parent / CURRENT).read_text().strip()
        snap = parent / name
        manifest: dict[str, Any] = orjson.loads((snap / MANIFEST).read_bytes())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict):
        return None
    return snap, manifest


def read_snapshot(parent: Path) -> tuple[Path, dict[str, Any]] | None:
    """(data dir, manifest) of the current snapshot, or None when there is none readable or its
    files do not match their checksums (the caller rebuilds from the store)."""
    found = current_snapshot(parent)
    if found is None:
        return None
    snap, manifest = found
    problems = verify_snapshot(snap / "data", manifest)
    if problems and FILES in manifest:
        log.warning("snapshot %s is damaged (%s); ignoring it", snap, "; ".join(problems[:3]))
        return None
    return snap / "data", manifest
