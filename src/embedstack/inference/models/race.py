"""The speed race that picks `auto`'s engine, run at a quiet moment and recorded with its load.

Speeds on a shared machine depend on what else runs: a race while the server ingests can crown
another engine than a race on idle cores. So the race waits (bounded) for the load average to
drop under a threshold, runs several times interleaved round by round, keeps each engine's
median, and the load it ran under is stored beside the choice (`embedstack models list`).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from embedstack.inference.backend import Embedder

IDLE_LOAD_PER_CPU = 0.5  # a 1-minute load average under this x CPUs counts as idle
IDLE_WAIT_S = 120.0  # how long a race waits for an idle moment before it runs anyway


class RaceStopped(Exception):
    """The race was asked to stop before it finished: nothing is measured or recorded."""


@dataclass(frozen=True)
class RaceLoad:
    """The machine's 1-minute load average before and after a race, on `cpus` CPUs."""

    before: float
    after: float
    cpus: int
    waited_s: float = 0.0

    @property
    def idle(self) -> bool:
        return max(self.before, self.after) < IDLE_LOAD_PER_CPU * self.cpus

    def describe(self) -> str:
        quiet = "idle" if self.idle else "busy"
        return f"load {self.before:.1f}-{self.after:.1f} on {self.cpus} CPUs ({quiet})"

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def load_now() -> float:
    return os.getloadavg()[0]


def wait_for_idle(
    max_wait_s: float = IDLE_WAIT_S,
    stop: threading.Event | None = None,
    load: Callable[[], float] = load_now,
    cpus: int | None = None,
    poll_s: float = 5.0,
) -> float:
    """Wait until the load average is idle for this machine, at most `max_wait_s` (or until
    `stop` is set); returns the seconds waited."""
    cpus = cpus or os.cpu_count() or 1
    started = time.monotonic()
    while load() >= IDLE_LOAD_PER_CPU * cpus:
        waited = time.monotonic() - started
        if waited >= max_wait_s or (stop is not None and stop.is_set()):
            break
        pause = min(poll_s, max_wait_s - waited)
        if stop is not None:
            stop.wait(pause)
        else:
            time.sleep(pause)
    return time.monotonic() - started


def race(
    embedders: Mapping[str, Embedder], texts: Sequence[str], rounds: int = 3
) -> dict[str, float]:
    """Median texts/s of each embedder on the same texts, run interleaved round by round."""
    seconds: dict[str, list[float]] = {name: [] for name in embedders}
    for e in embedders.values():
        e.embed_batch(texts[:64])  # warm up
    for _ in range(rounds):
        for name, e in embedders.items():
            started = time.perf_counter()
            for i in range(0, len(texts), 64):
                e.embed_batch(texts[i : i + 64])
            seconds[name].append(time.perf_counter() - started)
    return {name: len(texts) / max(float(np.median(s)), 1e-9) for name, s in seconds.items()}


def race_repeated(
    embedders: Mapping[str, Embedder],
    texts: Sequence[str],
    repeats: int = 3,
    max_wait_s: float = IDLE_WAIT_S,
    stop: threading.Event | None = None,
    load: Callable[[], float] = load_now,
) -> tuple[dict[str, float], RaceLoad]:
    """`race` at an idle moment (waiting at most `max_wait_s`), `repeats` times; each engine's
    median texts/s, and the load the races ran under. Raises RaceStopped when `stop` is set
    before the races are done (a stopping server does not spend its last seconds racing)."""
    waited = wait_for_idle(max_wait_s, stop, load)
    before = load()
    runs = []
    for _ in range(repeats):
        if stop is not None and stop.is_set():
            raise RaceStopped("the speed race was stopped before it finished")
        runs.append(race(embedders, texts))
    after = load()
    speeds = {name: float(np.median([r[name] for r in runs])) for name in embedders}
    return speeds, RaceLoad(
        round(before, 2), round(after, 2), os.cpu_count() or 1, round(waited, 1)
    )
