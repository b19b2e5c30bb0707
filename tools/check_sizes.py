"""Fail when a tracked file is over the size limit (generated artifacts do not belong in git).

Usage: python tools/check_sizes.py [--limit-mb 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path


def oversized(root: Path, limit_bytes: int) -> list[tuple[str, int]]:
    """Tracked files (as git lists them) whose size on disk is over limit_bytes."""
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=root, check=True, capture_output=True
    ).stdout
    found = []
    for raw in out.split(b"\0"):
        if not raw:
            continue
        path = root / raw.decode()
        if path.is_file() and path.stat().st_size > limit_bytes:
            found.append((raw.decode(), path.stat().st_size))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit-mb", type=float, default=5.0, help="largest allowed file (MiB)")
    args = parser.parse_args()
    root = Path(__file__).resolve().parent.parent
    big = oversized(root, int(args.limit_mb * 1024 * 1024))
    for name, size in big:
        print(
            f"tracked file over {args.limit_mb} MiB: {name} ({size / 2**20:.1f} MiB); "
            "remove it with 'git rm --cached' and add its pattern to .gitignore",
            file=sys.stderr,
        )
    return 1 if big else 0


if __name__ == "__main__":
    sys.exit(main())
