"""`embedstack serve` keeps large freed blocks out of the heap (cli/serve.py bound_heap): after
a large buffer is freed, resident memory goes back, where glibc's moving mmap threshold would
keep the pages of later buffers of the same size in the heap."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

PROBE = """
import sys
import numpy as np
from embedstack.cli.serve import bound_heap

def rss_mib():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 2**20

if sys.argv[1] == "bound":
    bound_heap()
before = rss_mib()
kept = []
for _ in range(4):
    # a freed 30 MiB buffer raises glibc's threshold: the next ones come from the heap, and a
    # small block allocated after each (a request's leftovers) keeps the heap from shrinking
    a = np.ones(30 * 2**20 // 8)
    kept.append(bytearray(100_000))
    del a
print(rss_mib() - before)
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc")  # fmt: skip
def test_freed_buffers_go_back_to_the_system() -> None:
    env = {"PATH": "/usr/bin:/bin"}

    def kept(mode: str) -> float:
        out = subprocess.run(
            [sys.executable, "-c", PROBE, mode], capture_output=True, text=True, env=env,
            timeout=60, check=True,
        )  # fmt: skip
        return float(out.stdout.strip())

    assert kept("bound") < 8, "bound_heap left freed buffers resident"
    assert kept("plain") > 25, "glibc kept no freed buffer: the probe no longer shows the case"
