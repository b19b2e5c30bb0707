"""Deadline-aware admission: the service-time model, the queue estimate, plan caps, search gate."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from embedstack.errors import Overloaded
from embedstack.inference.batching import admission
from embedstack.inference.batching.plan import Pending, plan, plan_in_order
from embedstack.inference.batching.tokens import Packed
from embedstack.obs.metrics import Metrics
from embedstack.serving.search_gate import SearchGate


def test_service_model_fits_overhead_and_per_token_cost() -> None:
    m = admission.ServiceModel()
    assert not m.known and m.seconds(100) == 0.0
    rng = random.Random(0)
    for _ in range(200):
        x = rng.randint(10, 4000)
        m.observe(x, 0.002 + 1e-5 * x)
    overhead, per_token = m.coefficients()
    assert overhead == pytest.approx(0.002, rel=1e-3)
    assert per_token == pytest.approx(1e-5, rel=1e-3)
    assert m.seconds(1000) == pytest.approx(0.012, rel=1e-3)
    assert m.tokens_within(0.012, default=7) == pytest.approx(1000, abs=1)
    assert m.tokens_within(0.0, default=7) == 1  # never zero: the oldest text always goes


def test_service_model_with_one_batch_shape_is_proportional_and_follows_change() -> None:
    m = admission.ServiceModel(halflife_batches=4)
    assert m.tokens_within(0.01, default=123) == 123  # unknown: the caller's default
    for _ in range(3):
        m.observe(64, 0.004)
    assert m.coefficients() == pytest.approx((0.0, 0.004 / 64))
    for _ in range(40):  # the machine got 3x slower
        m.observe(64, 0.012)
    assert m.seconds(64) == pytest.approx(0.012, rel=0.01)
    m.observe(0, 1.0)  # ignored
    m.observe(10, float("nan"))
    assert m.seconds(64) == pytest.approx(0.012, rel=0.01)


def _pending(tokens: list[int], lane: str = "query") -> Pending:
    n = len(tokens)
    loop = asyncio.new_event_loop()
    try:
        fut: asyncio.Future[np.ndarray] = loop.create_future()
    finally:
        loop.close()
    flat = np.zeros(sum(tokens), dtype=np.int64)
    return Pending(
        texts=["x"] * n, encoded=Packed.of(flat, np.array(tokens, dtype=np.int64)),
        tokens=tokens, lane=lane, arrival=0.0, future=fut,  # type: ignore[arg-type]
        out=np.empty((n, 4), dtype=np.float32),
    )  # fmt: skip


@pytest.mark.parametrize("seed", range(20))
def test_cut_batches_cuts_like_the_planner(seed: int) -> None:
    rng = random.Random(seed)
    tokens = [rng.choice([3, 8, 20, 120, 500]) for _ in range(rng.randint(1, 60))]
    size, budget = rng.choice([1, 4, 16]), rng.choice([64, 512, 2048])
    req = _pending(list(tokens))
    want = []
    while req.left:
        items, _ = plan_in_order({"query": [req], "bulk": []}, size, budget)
        req.take({idx for _, idx in items})
        want.append(len(items) * max(tokens[idx] for _, idx in items))
    assert admission.cut_batches(tokens, size, budget) == want


def test_queue_seconds_and_bulk_slices() -> None:
    m = admission.ServiceModel()
    for x in (10, 100, 1000):
        m.observe(x, 0.001 + 1e-5 * x)
    seconds, batches = admission.queue_seconds(m, [10] * 7, [10], 4, 10_000)
    assert batches == 2 and seconds == pytest.approx(2 * (0.001 + 40 * 1e-5))
    assert admission.bulk_slices(3, 0, 4) == 0
    assert admission.bulk_slices(3, 1, 4) == 1
    assert admission.bulk_slices(8, 0, 4) == 2
    assert admission.retry_after(0.5, 0.1) == pytest.approx(0.4)
    assert admission.retry_after(0.1, 0.5) > 0


def test_plan_caps_bulk_and_gives_bulk_its_turn() -> None:
    q, bulk = _pending([5, 5]), _pending([10] * 20, "bulk")
    queues = {"query": [q], "bulk": [bulk]}
    items, full = plan(queues, 64, 10_000)  # uncapped: bulk rides along to the size limit
    assert len(items) == 22 and not full
    items, full = plan(queues, 64, 10_000, bulk_tokens=50)  # 5 x 10 padded tokens
    assert [r.lane for r, _ in items] == ["query"] * 2 + ["bulk"] * 3 and not full
    items, full = plan(queues, 64, 10_000, bulk_tokens=50, bulk_turn=True)
    assert [r.lane for r, _ in items] == ["bulk"] * 5 and full  # cut at once: queries wait
    items, full = plan({"query": [], "bulk": [bulk]}, 64, 10_000, bulk_tokens=30)
    assert len(items) == 3


def test_search_gate_bounds_in_flight_and_refuses_past_the_deadline() -> None:
    metrics = Metrics()
    release = threading.Event()

    def search(x: int) -> int:
        assert release.wait(10)
        return x * 2

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            gate = SearchGate(pool, threads=1, max_inflight=4, metrics=metrics)
            assert gate.estimate() is None
            release.set()
            assert await gate.run(search, 1) == 2  # measured now
            assert gate.estimate() is not None
            # idle: a search the estimate says is too slow still runs (no one behind it)...
            gate._seconds = 10.0
            assert await gate.run(search, 2, deadline=time.monotonic() + 1) == 4
            # ... but not one whose deadline has passed
            with pytest.raises(Overloaded, match="budget"):
                await gate.run(search, 2, deadline=time.monotonic() - 1)
            gate._seconds = 0.05  # pretend a search takes 50 ms
            release.clear()
            running = [asyncio.create_task(gate.run(search, i)) for i in range(3)]
            await asyncio.sleep(0.01)
            assert gate.inflight == 3 and gate.estimate() == pytest.approx(0.2)
            with pytest.raises(Overloaded, match="budget") as late:
                await gate.run(search, 9, deadline=time.monotonic() + 0.1)
            assert late.value.retry_after > 0
            running.append(asyncio.create_task(gate.run(search, 3, deadline=time.monotonic() + 9)))
            await asyncio.sleep(0.01)
            with pytest.raises(Overloaded, match="limit"):
                await gate.run(search, 9)
            release.set()
            assert await asyncio.gather(*running) == [0, 2, 4, 6]
            # a deadline that passes while the search waits in the pool's queue: never run
            release.clear()
            blocker = asyncio.create_task(gate.run(search, 5))
            gate._seconds = 1e-6  # estimate: fits
            doomed = asyncio.create_task(gate.run(search, 6, deadline=time.monotonic() + 0.02))
            await asyncio.sleep(0.1)
            release.set()
            assert await blocker == 10
            with pytest.raises(Overloaded, match="dropped"):
                await doomed

    asyncio.run(main())
    sample = metrics.registry.get_sample_value
    assert sample("embedstack_shed_total", {"stage": "search", "reason": "full"}) == 1
    assert sample("embedstack_shed_total", {"stage": "search", "reason": "budget"}) == 2
    assert sample("embedstack_deadline_dropped_total", {"stage": "search"}) == 1


def test_overhead_is_capped_by_the_shortest_recent_batch() -> None:
    m = admission.ServiceModel()
    for x, y in ((8000, 0.50), (9000, 0.40), (10000, 0.70), (8500, 0.62)):  # noisy bulk batches
        m.observe(x, y)
    m.observe(10, 0.003)  # one small query batch
    assert m.seconds(10) < 0.01
