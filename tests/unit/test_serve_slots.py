"""ServeBatcher's bound on bulk requests in flight (serve_ray.Slots): never more holders than
slots, first come first served, a cancelled waiter leaks no slot, callers on several threads'
event loops share one bound."""

from __future__ import annotations

import asyncio
import threading

from embedstack.inference.serve_ray import Slots


async def _hold(slots: Slots, order: list[int], i: int) -> None:
    await slots.acquire()
    try:
        order.append(i)
        await asyncio.sleep(0.01)
    finally:
        slots.release()


def test_at_most_n_holders_first_come_first_served() -> None:
    slots, order = Slots(3), []

    async def run() -> None:
        await asyncio.gather(*(_hold(slots, order, i) for i in range(20)))

    asyncio.run(run())
    assert slots.most == 3 and slots.held == 0
    assert order == list(range(20))


def test_a_cancelled_waiter_leaks_no_slot() -> None:
    slots = Slots(1)

    async def run() -> None:
        await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())
        await asyncio.sleep(0.01)
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        slots.release()
        await asyncio.wait_for(slots.acquire(), 1.0)  # the slot is free again
        slots.release()

    asyncio.run(run())
    assert slots.held == 0


def test_callers_on_several_event_loops_share_the_bound() -> None:
    slots, order = Slots(2), []
    errors: list[BaseException] = []

    def thread(base: int) -> None:
        async def run() -> None:
            await asyncio.gather(*(_hold(slots, order, base + i) for i in range(10)))

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=thread, args=(100 * t,)) for t in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == [] and len(order) == 30
    assert slots.most == 2 and slots.held == 0
