"""Background threads that must not slow the queries beside them."""

from __future__ import annotations

import contextlib
import os
import threading

BACKGROUND_NICE = 19


def lower_priority() -> None:
    """Give the calling thread the lowest CPU priority (Linux: nice is per thread; elsewhere
    nothing changes). The online recall check scans every vector of an index: at nice 10 it
    still took enough of a core from the query beside it that p99 at 1M was 18.7 ms; at 19,
    10.1 ms (bench/million.py; 8.6 ms with the check off)."""
    with contextlib.suppress(OSError, AttributeError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), BACKGROUND_NICE)
