"""AdaptiveLimit (serving/concurrency.py): the bound on admitted queries in flight shrinks when
answered latency nears the budget, grows only when it binds and latency is low, and lets a roomy
budget wait in line for a slot while a tight one is refused at once."""

from __future__ import annotations

import asyncio
import time

from embedstack.serving.concurrency import AdaptiveLimit, Limits


def _answer(limit: AdaptiveLimit, n: int, ratio: float, budget: float = 0.1) -> None:
    for _ in range(n):
        assert limit.acquire()
        limit.release(ratio * budget, budget)


def test_the_limit_shrinks_near_the_budget_and_grows_only_when_it_binds() -> None:
    limit = AdaptiveLimit(initial=16, minimum=2, window=10)
    _answer(limit, 10, 0.3)  # fast, but the limit bound no one: unchanged
    assert limit.limit == 16
    _answer(limit, 10, 0.95)  # near the budget: x0.8
    assert limit.limit == 12
    for _ in range(30):
        _answer(limit, 10, 1.5)
    assert limit.limit == 2  # never under the minimum
    held = [limit.acquire() for _ in range(3)]
    assert held == [True, True, False]  # bound: someone refused
    limit.release()
    limit.release()
    _answer(limit, 10, 0.2)
    assert limit.limit == 3  # grew by max(1, limit // 8)
    assert limit.inflight == 0


def test_a_roomy_budget_waits_for_a_slot_and_a_tight_one_is_refused_at_once() -> None:
    async def run() -> None:
        limit = AdaptiveLimit(initial=1, window=1000)
        _answer(limit, 1, 0.1, budget=0.1)  # typical latency 10 ms
        assert limit.acquire()  # the one slot, held
        now = time.monotonic()
        started = time.perf_counter()
        assert not await limit.acquire_by(now + 0.1)  # 100 ms < 10 x typical: refused at once
        assert time.perf_counter() - started < 0.05
        waiter = asyncio.create_task(limit.acquire_by(now + 5.0))
        await asyncio.sleep(0.01)
        assert not waiter.done()
        limit.release()  # handed to the waiter: still one in flight
        assert await waiter and limit.inflight == 1
        late = asyncio.create_task(limit.acquire_by(time.monotonic() + 0.2))  # waits <= 190 ms
        assert not await late  # no slot came: refused, nothing leaked
        assert limit.inflight == 1
        gone = asyncio.create_task(limit.acquire_by(time.monotonic() + 5.0))
        await asyncio.sleep(0.01)
        gone.cancel()  # the caller went away while in line
        await asyncio.gather(gone, return_exceptions=True)
        limit.release()
        assert limit.inflight == 0

    asyncio.run(run())


def test_limits_keep_one_per_model_and_tell_each_limit_as_it_moves() -> None:
    told: list[tuple[str | None, int]] = []
    limits = Limits(initial=4, on_change=lambda key, n: told.append((key, n)))
    assert limits.get("m") is limits.get("m") and limits.get(None) is not limits.get("m")
    assert limits.get("x").limit == 4
    assert told == [("m", 4), (None, 4), ("x", 4)]  # once each, when made
    slow = limits.get("m")
    slow.window = 2
    _answer(slow, 2, 0.95)  # x0.8 -> 3
    _answer(slow, 2, 0.95)  # 3 -> 2
    assert told[3:] == [("m", 3), ("m", 2)]
    _answer(slow, 2, 0.95)  # at the minimum: no move, nothing told
    assert len(told) == 5
