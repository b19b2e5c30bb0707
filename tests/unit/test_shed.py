"""The shedding middleware's decision: which requests it judges, their deadline and lanes, and
when admission (the real SearchGate and Batcher) refuses them before FastAPI parses anything."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from embedstack.config import Settings
from embedstack.inference.batching.batcher import Batcher, BatcherConfig
from embedstack.inference.engines.slow import SlowEmbedder
from embedstack.serving import search_gate
from embedstack.serving.auth import INSECURE
from embedstack.serving.search_gate import SearchGate
from embedstack.serving.shed import (
    EMBEDDINGS_ROUTE,
    QUERY_ROUTE,
    Ask,
    Overhead,
    ask_of,
    refusal,
    route_of,
)

SETTINGS = Settings(query_budget_ms=100.0, max_query_budget_ms=5000.0, default_model="m0")
MODELS = {"docs": "slow-test"}  # collection -> the model its text queries went to


def _scope(path: str, method: str = "POST", headers: dict[str, str] | None = None) -> Any:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return {"type": "http", "method": method, "path": path, "headers": raw,
            "state": {"principal": INSECURE}}  # fmt: skip


def test_route_of_picks_only_the_query_and_embeddings_posts() -> None:
    assert route_of(_scope("/v1/collections/docs/query")) is QUERY_ROUTE
    assert route_of(_scope("/v1/embeddings")) is EMBEDDINGS_ROUTE
    assert route_of(_scope("/v1/collections/docs/query", "GET")) is None
    assert route_of(_scope("/v1/collections/docs/documents")) is None
    assert route_of(_scope("/v1/collections/a/b/query")) is None
    assert route_of(_scope("/v1/collections//query")) is None


def test_ask_of_reads_the_budget_and_lanes_like_the_route() -> None:
    path = "/v1/collections/docs/query"
    text = ask_of(SETTINGS, MODELS, _scope(path), {"text": "hi"}, 10.0)
    assert text == Ask(10.1, "docs", "slow-test")  # the server default budget
    header = _scope(path, headers={"X-Request-Budget-Ms": "250"})
    assert ask_of(SETTINGS, MODELS, header, {"text": "hi"}, 10.0) == Ask(10.25, "docs", "slow-test")
    body = ask_of(SETTINGS, MODELS, header, {"text": "hi", "budget_ms": 40}, 10.0)
    assert body is not None and body.deadline == pytest.approx(10.04)  # the body's wins
    # lanes: a vector or a lexical query skips the model; an unknown collection has no model yet
    for skip in (
        {"vector": [0.1]},
        {"text": "hi", "vector": [0.1]},
        {"text": "x", "mode": "lexical"},
    ):
        assert ask_of(SETTINGS, MODELS, _scope(path), skip, 10.0) == Ask(10.1, "docs", None)
    other = _scope("/v1/collections/other/query")
    assert ask_of(SETTINGS, MODELS, other, {"text": "hi"}, 10.0) == Ask(10.1, "other", None)
    # what the route answers 4xx, the middleware leaves to it
    for bad in ({"X-Request-Budget-Ms": "soon"}, {"X-Request-Budget-Ms": "9999"},
                {"X-Request-Budget-Ms": "0"}, {"X-Request-Budget-Ms": "nan"}):  # fmt: skip
        assert ask_of(SETTINGS, MODELS, _scope(path, headers=bad), {"text": "hi"}, 10.0) is None
    for bad_body in ({"text": "hi", "budget_ms": "50"}, {"text": "hi", "budget_ms": True},
                     {"text": "hi", "budget_ms": -1}):  # fmt: skip
        assert ask_of(SETTINGS, MODELS, _scope(path), bad_body, 10.0) is None
    assert ask_of(SETTINGS, MODELS, _scope("/v1/collections/a:b/query"), {"text": "x"}, 1) is None
    # embeddings: a deadline only when the header asks for one, on the request's model
    emb = "/v1/embeddings"
    assert ask_of(SETTINGS, MODELS, _scope(emb), {"input": "x"}, 10.0) is None
    timed = _scope(emb, headers={"X-Request-Budget-Ms": "50"})
    assert ask_of(SETTINGS, MODELS, timed, {"input": "x"}, 10.0) == Ask(10.05, None, "m0")
    assert ask_of(SETTINGS, MODELS, timed, {"input": "x", "model": "b"}, 10.0) == Ask(
        10.05, None, "b"
    )


def test_vector_queries_are_refused_by_the_search_gate() -> None:
    release = threading.Event()

    def search() -> None:
        assert release.wait(10)

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            gate = SearchGate(pool, threads=1, max_inflight=3)
            vector = Ask(time.monotonic() + 0.1, "docs", None)
            assert refusal(gate, {}, vector) is None  # nothing measured, nothing running
            gate.observe(0.05)  # a search takes 50 ms
            running = [asyncio.create_task(gate.run(search)) for _ in range(2)]
            await asyncio.sleep(0.01)
            late = refusal(gate, {}, Ask(time.monotonic() + 0.1, "docs", None))
            assert late is not None and "budget" in late.message and late.retry_after > 0
            assert refusal(gate, {}, Ask(time.monotonic() + 1.0, "docs", None)) is None
            running.append(asyncio.create_task(gate.run(search)))
            await asyncio.sleep(0.01)
            full = refusal(gate, {}, Ask(time.monotonic() + 10.0, "docs", None))
            assert full is not None and "limit" in full.message
            release.set()
            await asyncio.gather(*running)
            # an idle gate takes any query still within its deadline, whatever the estimate
            gate.observe(10.0)
            assert refusal(gate, {}, Ask(time.monotonic() + 0.1, "docs", None)) is None
            assert refusal(gate, {}, Ask(time.monotonic() - 0.001, "docs", None)) is not None

    asyncio.run(main())


def test_text_queries_are_refused_when_the_model_queue_would_miss_the_deadline() -> None:
    """The slow test model: 25 ms per batch + 1 ms per text, batches of 4."""

    async def main() -> None:
        batcher = Batcher(SlowEmbedder(), BatcherConfig(max_batch_size=4))
        await batcher.start()
        try:
            with ThreadPoolExecutor(1) as pool:
                gate = SearchGate(pool, threads=1, max_inflight=8)
                batchers = {"slow-test": batcher}
                ask = Ask(time.monotonic() + 0.05, "docs", "slow-test")
                assert refusal(gate, batchers, ask) is None  # speed unknown: admitted
                for i in range(3):
                    await batcher.embed([f"warm {i}"] * 4)  # the model's speed is measured
                queued = asyncio.gather(*(batcher.embed([f"t {i}"]) for i in range(24)))
                await asyncio.sleep(0)  # 24 texts queued: 6 batches, ~170 ms
                late = refusal(gate, batchers, Ask(time.monotonic() + 0.05, "docs", "slow-test"))
                assert late is not None and "slow-test" in late.message
                roomy = Ask(time.monotonic() + 5.0, "docs", "slow-test")
                assert refusal(gate, batchers, roomy) is None
                # the search's share comes off the model's deadline
                gate.observe(4.99)
                assert refusal(gate, batchers, roomy) is not None
                await queued
        finally:
            await batcher.stop()

    asyncio.run(main())


def test_a_stale_search_estimate_cannot_refuse_text_queries_forever(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with ThreadPoolExecutor(1) as pool:
        gate = SearchGate(pool, threads=1, max_inflight=8)
        gate.observe(0.5)  # a stall made one search look slow
        assert gate.estimate() == pytest.approx(0.5)
        monkeypatch.setattr(search_gate, "STALE_S", 0.0)  # no search measured since
        time.sleep(0.001)
        assert gate.estimate() is None  # idle and stale: not counted
        gate.observe(0.002)  # the next measurement replaces it instead of averaging in
        monkeypatch.setattr(search_gate, "STALE_S", 60.0)
        assert gate.estimate() == pytest.approx(0.002)
        gate.observe(0.004)
        assert gate.estimate() == pytest.approx(0.0022)  # fresh: averaged (EWMA)


def test_overhead_learns_what_the_estimates_miss_and_forgets_it_when_stale() -> None:
    o = Overhead(alpha=0.5, stale_s=1.0)
    assert o.seconds(0.0) == 0.0  # nothing measured
    o.observe(0.040, now=10.0)  # an answer took 40 ms more than predicted: taken as is
    assert o.seconds(10.5) == pytest.approx(0.040)
    o.observe(0.020, now=10.6)  # then averaged
    assert o.seconds(10.6) == pytest.approx(0.030)
    o.observe(-0.010, now=10.7)  # faster than predicted counts as no overhead
    assert o.seconds(10.7) == pytest.approx(0.015)
    # nothing answered for a second (everything refused?): not counted, so queries get through
    assert o.seconds(11.8) == 0.0
    o.observe(0.002, now=12.0)  # and the next answer replaces the old value
    assert o.seconds(12.0) == pytest.approx(0.002)


def test_the_gate_tells_a_searchs_cpu_cost_apart_from_its_wall_time() -> None:
    """A search that waits (here: sleeps, as one preempted on a loaded machine would) takes wall
    time but no CPU: the inline decision reads the CPU cost, admission the wall estimate."""

    async def main() -> None:
        with ThreadPoolExecutor(1) as pool:
            gate = SearchGate(pool, threads=1, max_inflight=3)
            assert gate.cpu_cost is None
            await gate.run(time.sleep, 0.05)
            estimate, cost = gate.estimate(), gate.cpu_cost
            assert estimate is not None and estimate >= 0.04
            assert cost is not None and cost < 0.01
            gate.observe(0.05, 0.002)
            assert gate.cpu_cost == pytest.approx(cost + 0.1 * (0.002 - cost))

    asyncio.run(main())
