"""A load step against an autoscaled inference deployment, sampled over time: replica count by
state, queue depth (texts sent and not yet answered) and p99 latency of the last interval.

Callers are coroutines on the step's own event loop thread; `set_callers(n)` raises or lowers
the load while it runs. Every answer is checked (`check`), and every failure is kept: the
autoscale test and bench/autoscale.py both read `failures` and `samples`."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstack.inference.batching.batcher import Batcher
from embedstack.inference.batching.plan import Lane


@dataclass(frozen=True)
class Sample:
    t: float  # seconds since the step started
    callers: int
    replicas: dict[str, int]  # by state: RUNNING, STARTING, STOPPING, ...
    queued: int  # texts sent and not yet answered
    p99_ms: float | None  # of the requests answered since the previous sample
    done: int  # requests answered so far
    failed: int

    @property
    def running(self) -> int:
        return self.replicas.get("RUNNING", 0)


@dataclass
class LoadStep:
    batcher: Batcher
    texts: Callable[[int], list[str]]  # the texts of request number i
    replicas: Callable[[], dict[str, int]]
    check: Callable[[Sequence[str], np.ndarray], None] | None = None
    interval_s: float = 0.5
    bulk_share: int = 2  # every this-many-th caller sends bulk work, the others queries
    samples: list[Sample] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    done: int = 0
    _latencies: list[float] = field(default_factory=list)
    _callers: list[asyncio.Task[None]] = field(default_factory=list)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _sampler: Future[None] | None = None
    _started: float = 0.0
    _next: int = 0

    def start(self) -> LoadStep:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._started = time.monotonic()
        self._sampler = asyncio.run_coroutine_threadsafe(self._sample_forever(), self._loop)
        return self

    def set_callers(self, n: int) -> None:
        """Run `n` concurrent callers from now on."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._resize(n), self._loop).result(timeout=30)

    def stop(self) -> None:
        if self._loop is None:
            return
        self.set_callers(0)
        assert self._sampler is not None and self._thread is not None
        self._sampler.cancel()
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(asyncio.sleep(0.1), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop = None

    def elapsed(self) -> float:
        """Seconds since start(), the clock of the samples' `t`."""
        return time.monotonic() - self._started

    def wait_for(self, what: Callable[[Sample], bool], timeout: float) -> Sample:
        """The first sample from now on for which `what` holds; TimeoutError after `timeout`."""
        seen = len(self.samples)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for sample in self.samples[seen:]:
                if what(sample):
                    return sample
            seen = len(self.samples)
            time.sleep(self.interval_s / 2)
        last = self.samples[-1] if self.samples else None
        raise TimeoutError(f"not reached in {timeout:.0f}s; last sample {last}")

    def rows(self) -> list[tuple[Any, ...]]:
        """(t, callers, running, starting, stopping, queued, p99 ms, done, failed) per sample."""
        return [
            (
                round(s.t, 1),
                s.callers,
                s.running,
                s.replicas.get("STARTING", 0),
                s.replicas.get("STOPPING", 0),
                s.queued,
                None if s.p99_ms is None else round(s.p99_ms, 1),
                s.done,
                s.failed,
            )
            for s in self.samples
        ]

    async def _resize(self, n: int) -> None:
        while len(self._callers) > n:
            task = self._callers.pop()
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        while len(self._callers) < n:
            lane: Lane = "bulk" if len(self._callers) % self.bulk_share == 1 else "query"
            self._callers.append(asyncio.create_task(self._call_forever(lane)))

    async def _call_forever(self, lane: Lane) -> None:
        while True:
            i, self._next = self._next, self._next + 1
            texts = self.texts(i)
            started = time.perf_counter()
            try:
                vectors = await self.batcher.embed(texts, lane)
                if self.check is not None:
                    self.check(texts, vectors)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.failures.append(f"{lane} request {i}: {type(exc).__name__}: {exc}")
            else:
                self.done += 1
                self._latencies.append(time.perf_counter() - started)

    async def _sample_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            latencies, self._latencies = self._latencies, []
            p99 = float(np.percentile(latencies, 99)) * 1000 if latencies else None
            replicas = await asyncio.to_thread(self.replicas)
            self.samples.append(
                Sample(
                    t=time.monotonic() - self._started,
                    callers=len(self._callers),
                    replicas=replicas,
                    queued=sum(self.batcher.pending().values()),
                    p99_ms=p99,
                    done=self.done,
                    failed=len(self.failures),
                )
            )
