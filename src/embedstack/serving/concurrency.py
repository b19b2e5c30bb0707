"""AdaptiveLimit: a bound on admitted queries in flight that follows their measured latency.

Deadline admission (serving/shed.py) predicts each query's wait from the model's queue and the
search estimate. Under closed-loop load (clients that wait for their answer) that is enough: the
clients bound the concurrency. Under open-loop load (arrivals that do not wait, a Poisson burst)
nothing bounds how many admitted queries run at once, the predictions err on bursts, and the
server either admits queries that then miss their budget or, learning the error, refuses work
its model could still do (measured: goodput at 4x the peak 0.3-0.4 of the peak open loop, 1.2
closed loop). Bounding the admitted queries in flight makes open-loop load look like closed
loop to the model: latency ~ in-flight / throughput (Little's law).

The bound adapts as Netflix's concurrency-limits and Envoy's adaptive concurrency filter do, but
against the request's own budget rather than a no-load latency: over each window of answered
queries, when the 90th percentile of latency / budget is above `high` the limit shrinks
multiplicatively; when it is under `low` and the limit refused someone in that window, it grows
by an eighth. A limit that never binds never grows, so an idle server cannot drift to a bound
that means nothing.

A query that finds the limit full is refused at once, unless its budget is roomy (at least
`ROOMY` times the typical answered latency, e.g. a batch caller's 60 s): then it waits in line
(FIFO, at most `max_waiting`) for a slot until its deadline less one typical latency, and is
refused only if none came. One limit per key (the model a query's text goes to; None for queries
that skip the model), all on the event loop (no locks).
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

ROOMY = 10.0  # a budget this many typical latencies long may wait for a slot


@dataclass
class AdaptiveLimit:
    initial: int = 16
    minimum: int = 2
    maximum: int = 1024
    window: int = 32  # answered queries per adjustment
    high: float = 0.8  # p90 of latency/budget above this: shrink
    low: float = 0.5  # under this (and the limit bound someone): grow
    decrease: float = 0.8
    max_waiting: int = 256
    on_change: Callable[[int], None] | None = None  # told the limit when it is set or moves
    limit: int = field(init=False)
    inflight: int = field(init=False, default=0)
    typical: float = field(init=False, default=0.0)  # EWMA of answered latency, seconds
    _ratios: list[float] = field(init=False, default_factory=list)
    _bound: int = field(init=False, default=0)  # refusals by the limit in this window
    _waiting: deque[asyncio.Future[None]] = field(init=False, default_factory=deque)

    def __post_init__(self) -> None:
        self.limit = self.initial
        if self.on_change is not None:
            self.on_change(self.limit)

    def _set(self, limit: int) -> None:
        if limit != self.limit and self.on_change is not None:
            self.on_change(limit)
        self.limit = limit

    def acquire(self) -> bool:
        """Take a slot; False (refuse the query) when `limit` are in flight."""
        if self.inflight >= self.limit:
            self._bound += 1
            return False
        self.inflight += 1
        return True

    async def acquire_by(self, deadline: float) -> bool:
        """Take a slot, waiting for one in line when the time to `deadline` (time.monotonic())
        is roomy; False when refused."""
        if self.acquire():
            return True
        left = deadline - time.monotonic() - self.typical
        if (
            not self.typical
            or left < ROOMY * self.typical
            or len(self._waiting) >= self.max_waiting
        ):
            return False
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter), left)
            return True  # release() handed its slot over
        except BaseException as exc:  # timed out, or the caller went away
            if waiter.done():  # handed over all the same: give it on
                self.release()
            else:
                waiter.cancel()
            if isinstance(exc, TimeoutError):
                return False
            raise
        finally:
            if waiter in self._waiting:
                self._waiting.remove(waiter)

    def release(self, latency: float | None = None, budget: float | None = None) -> None:
        """Give the slot back (to the first in line, if any); `latency` and `budget` (seconds)
        of an answered query feed the adjustment (a refused or failed one passes None: its
        latency says nothing)."""
        while self._waiting and self.inflight <= self.limit:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)  # the slot passes on: inflight unchanged
                break
        else:
            self.inflight = max(0, self.inflight - 1)
        if latency is None or not budget or budget <= 0:
            return
        self.typical = (
            latency if not self.typical else self.typical + 0.1 * (latency - self.typical)
        )
        self._ratios.append(latency / budget)
        if len(self._ratios) < self.window:
            return
        ratios = sorted(self._ratios)
        p90 = ratios[min(len(ratios) - 1, int(0.9 * len(ratios)))]
        if p90 > self.high:
            self._set(max(self.minimum, int(self.limit * self.decrease)))
        elif p90 < self.low and self._bound:
            self._set(min(self.maximum, self.limit + max(1, self.limit // 8)))
        self._ratios.clear()
        self._bound = 0


class Limits:
    """One AdaptiveLimit per key, made on first use with the same settings; `on_change(key,
    limit)` is told each limit when it is made and whenever it moves (a gauge, say)."""

    def __init__(
        self, initial: int = 16, maximum: int = 1024,
        on_change: Callable[[str | None, int], None] | None = None,
    ) -> None:  # fmt: skip
        self._initial = initial
        self._maximum = maximum
        self._on_change = on_change
        self._limits: dict[str | None, AdaptiveLimit] = {}

    def get(self, key: str | None) -> AdaptiveLimit:
        found = self._limits.get(key)
        if found is None:
            tell = self._on_change
            found = self._limits[key] = AdaptiveLimit(
                self._initial, maximum=self._maximum,
                on_change=None if tell is None else lambda limit: tell(key, limit),
            )  # fmt: skip
        return found
