"""The speed race behind `auto`: it waits for a quiet machine (bounded), repeats, keeps the
median, and records the load it ran under."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from embedstack.inference.models.gate import GateCache
from embedstack.inference.models.race import (
    IDLE_LOAD_PER_CPU,
    RaceLoad,
    RaceStopped,
    race_repeated,
    wait_for_idle,
)


def _loads(*values: float) -> Iterator[float]:
    yield from values
    while True:
        yield values[-1]


def test_an_idle_machine_races_at_once() -> None:
    assert wait_for_idle(60, load=lambda: 0.1, cpus=2, poll_s=0.01) < 0.5


def test_a_busy_machine_is_waited_out_until_it_calms_down() -> None:
    seq = _loads(9.0, 9.0, 3.0, 0.2)
    waited = wait_for_idle(60, load=lambda: next(seq), cpus=2, poll_s=0.01)
    assert 0.02 <= waited < 5  # three polls, then idle
    assert next(seq) == 0.2


def test_the_wait_is_bounded_and_a_stop_ends_it() -> None:
    assert 0.05 <= wait_for_idle(0.05, load=lambda: 50.0, cpus=2, poll_s=0.01) < 2
    stop = threading.Event()
    stop.set()
    assert wait_for_idle(60, stop=stop, load=lambda: 50.0, cpus=2, poll_s=0.01) < 1


class _Sleepy:
    def __init__(self, delay: float) -> None:
        self.delay = delay

    def embed_batch(self, texts: list[str], encoded: object = None) -> np.ndarray:
        threading.Event().wait(self.delay)
        return np.zeros((len(texts), 2), dtype=np.float32)


def test_repeated_race_keeps_the_median_and_records_the_load(tmp_path: Path) -> None:
    seq = _loads(0.3, 0.3, 0.4)
    engines = {"slow": _Sleepy(0.01), "fast": _Sleepy(0.0)}
    speeds, load = race_repeated(
        engines, ["t"] * 8, repeats=2, max_wait_s=1, load=lambda: next(seq)
    )  # type: ignore[arg-type]
    assert speeds["fast"] > speeds["slow"] > 0
    assert (load.before, load.after) == (0.3, 0.4) and load.cpus >= 1
    cache = GateCache(tmp_path / "gate.json")
    cache.put_choice("k", "fast", speeds, load.as_dict())
    assert cache.get_choice("k") == "fast"
    assert cache.get_race_load("k") == load.as_dict()
    assert cache.get_race_load("missing") is None


def test_load_is_described_as_idle_or_busy() -> None:
    assert RaceLoad(0.2, 0.3, 2).idle and "idle" in RaceLoad(0.2, 0.3, 2).describe()
    busy = RaceLoad(IDLE_LOAD_PER_CPU * 2 + 1, 4.0, 2)
    assert not busy.idle and busy.describe().startswith("load 2.0-4.0 on 2 CPUs (busy)")


def test_a_stopped_race_measures_and_records_nothing() -> None:
    stop = threading.Event()
    stop.set()
    engine = _Sleepy(0.0)
    with pytest.raises(RaceStopped):
        race_repeated({"a": engine}, ["t"] * 4, max_wait_s=0, stop=stop, load=lambda: 0.1)  # type: ignore[dict-item]
