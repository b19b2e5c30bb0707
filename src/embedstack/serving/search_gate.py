"""Bounded, deadline-aware admission to the search thread pool.

A ThreadPoolExecutor queues without bound; in front of it the gate counts searches running or
queued, measures how long one takes (EWMA), and refuses (Overloaded, 429) a search past the
in-flight bound or one whose estimated finish (searches ahead / threads, plus its own) is past
its deadline. A search whose deadline passes while it waits in the pool's queue is dropped
before it costs search time. An idle pool takes any search still within its deadline (as an
idle model takes any text): shedding protects the requests behind, and there are none.

The estimate is only as fresh as the last search measured. A text query is refused when the
model's wait plus the search estimate is past its deadline, so an estimate inflated by a stall
(a loaded machine, a long GC) could refuse every text query, and with no search admitted nothing
would ever correct it. So an estimate not refreshed for `STALE_S` is unknown (not counted) while
the pool is idle, and the first measurement after such a gap replaces it instead of averaging in.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from embedstack.errors import Overloaded
from embedstack.obs.metrics import Metrics

T = TypeVar("T")

_SAFETY = 1.2  # estimated waits are stretched by this before comparing to deadlines
_EWMA = 0.1
_MIN_RETRY_AFTER = 0.1
STALE_S = 1.0  # an estimate older than this is not trusted while the pool is idle


class _Expired:
    pass


_EXPIRED = _Expired()


class SearchGate:
    """Admission to `pool` (`threads` workers): at most `max_inflight` searches running or
    queued, and none that would finish past its deadline."""

    def __init__(
        self, pool: Executor, threads: int, max_inflight: int, metrics: Metrics | None = None
    ) -> None:
        if threads < 1 or max_inflight < 1:
            raise ValueError("threads and max_inflight must be at least 1")
        self._pool = pool
        self._threads = threads
        self._max = max_inflight
        self._metrics = metrics
        self._inflight = 0
        self._seconds: float | None = None  # EWMA of one search's run time
        self._cpu: float | None = None  # EWMA of one search's CPU time (its thread's)
        self._measured = -STALE_S  # time.monotonic() of the last measured search

    @property
    def inflight(self) -> int:
        return self._inflight

    def estimate(self) -> float | None:
        """Estimated seconds until a search submitted now is done; None before any search, or
        while the pool is idle and no search was measured for STALE_S."""
        if self._seconds is None or (self._inflight == 0 and self._stale()):
            return None
        rounds = self._inflight // self._threads + 1
        return rounds * self._seconds

    @property
    def cpu_cost(self) -> float | None:
        """CPU seconds one search takes (EWMA of its thread's time; None before any): what a
        search costs whoever runs it, however loaded the machine, unlike `estimate`."""
        return self._cpu

    def observe(self, seconds: float, cpu: float | None = None) -> None:
        if cpu is not None and cpu >= 0:
            c = self._cpu
            self._cpu = cpu if c is None else c + _EWMA * (cpu - c)
        if seconds > 0:
            s = self._seconds
            fresh = s is None or self._stale()
            self._seconds = seconds if fresh or s is None else s + _EWMA * (seconds - s)
            self._measured = time.monotonic()

    def _stale(self) -> bool:
        return time.monotonic() - self._measured > STALE_S

    async def run(self, fn: Callable[..., T], *args: Any, deadline: float | None = None) -> T:
        """fn(*args) in the pool, if admitted; Overloaded when refused or expired. With nothing
        running or queued, a search whose deadline has not passed runs whatever the estimate:
        refusing it would spare no one else."""
        self.check(deadline)
        self._set_inflight(1)
        submitted = time.perf_counter()
        try:
            loop = asyncio.get_running_loop()
            result, seconds, cpu = await loop.run_in_executor(
                self._pool, _timed, fn, args, deadline
            )
        finally:
            self._set_inflight(-1)
        if self._metrics is not None:  # waiting for a pool thread, and the hops there and back
            waited = max(0.0, time.perf_counter() - submitted - seconds)
            self._metrics.stage_seconds.labels("admission_wait", "query").observe(waited)
        if isinstance(result, _Expired):
            if self._metrics is not None:
                self._metrics.deadline_dropped.labels(stage="search").inc()
            raise Overloaded(
                "the search waited past the request's latency budget and was dropped unrun; "
                "retry, lower client concurrency or send a larger budget",
                retry_after=self._retry_after(0.0),
            )
        self.observe(seconds, cpu)
        return result

    def check(self, deadline: float | None = None) -> None:
        """Overloaded if a search submitted now would be refused (an idle gate takes any search
        whose deadline has not passed)."""
        if self._inflight == 0 and deadline is not None and deadline > time.monotonic():
            deadline = None
        if self._inflight >= self._max:
            self._shed("full")
            raise Overloaded(
                f"{self._inflight} searches are running or queued, the limit; retry after "
                f"{self._retry_after(0.0):.1f}s or lower client concurrency",
                retry_after=self._retry_after(0.0),
            )
        if deadline is not None:
            available = deadline - time.monotonic()
            estimate = self.estimate()
            if estimate is not None:
                estimate *= _SAFETY
                if self._metrics is not None:
                    self._metrics.estimated_wait.labels(stage="search").observe(estimate)
            if available <= 0 or (estimate is not None and estimate > available):
                self._shed("budget")
                wait = estimate or 0.0
                raise Overloaded(
                    f"the search would take about {wait * 1000:.0f} ms, past the request's "
                    f"latency budget ({max(available, 0) * 1000:.0f} ms left); retry after "
                    f"{self._retry_after(available):.1f}s, lower client concurrency or send a "
                    "larger budget",
                    retry_after=self._retry_after(available),
                )

    def _retry_after(self, available: float) -> float:
        estimate = self.estimate() or 0.0
        return max(estimate - max(available, 0.0), _MIN_RETRY_AFTER)

    def _shed(self, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.shed.labels(stage="search", reason=reason).inc()

    def _set_inflight(self, delta: int) -> None:
        self._inflight += delta
        if self._metrics is not None:
            self._metrics.search_inflight.set(self._inflight)


def _timed(fn: Callable[..., Any], args: tuple[Any, ...], deadline: float | None) -> Any:
    """In a pool thread: (result, seconds, CPU seconds), or (_EXPIRED, 0, None) when the
    deadline passed."""
    if deadline is not None and time.monotonic() > deadline:
        return _EXPIRED, 0.0, None
    started, cpu = time.perf_counter(), time.thread_time()
    result = fn(*args)
    return result, time.perf_counter() - started, time.thread_time() - cpu
