"""tools/check_sizes.py: the make-test guard against committed artifacts."""

from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _load():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("check_sizes", ROOT / "tools" / "check_sizes.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_tracked_file_over_the_limit_is_reported(tmp_path: Path) -> None:
    check = _load()
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "small.txt").write_bytes(b"x" * 1000)
    (tmp_path / "big.data").write_bytes(b"x" * 6 * 1024 * 1024)
    (tmp_path / "untracked.data").write_bytes(b"x" * 6 * 1024 * 1024)
    subprocess.run(["git", "-C", str(tmp_path), "add", "small.txt", "big.data"], check=True)
    found = check.oversized(tmp_path, 5 * 1024 * 1024)
    assert [name for name, _ in found] == ["big.data"]


def test_this_repository_has_no_oversized_tracked_file() -> None:
    assert _load().oversized(ROOT, 5 * 1024 * 1024) == []
