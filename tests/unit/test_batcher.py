"""Batcher: ordering, batch limits, coalescing, priority, admission, cancellation, errors, stop."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import numpy as np
import pytest

from embedstack.errors import InvalidInput, Overloaded, Unavailable
from embedstack.inference.batching.batcher import Batcher, BatcherConfig
from embedstack.inference.batching.tokens import Packed
from embedstack.obs.metrics import Metrics
from embedstack.types import ModelSpec

DIM = 512
T = TypeVar("T")


class FakeTokenizer:
    """One token per whitespace-separated word, plus two special tokens."""

    @property
    def num_special_tokens(self) -> int:
        return 2

    def offsets(self, text: str) -> list[tuple[int, int]]:
        spans, pos = [], 0
        for word in text.split():
            start = text.index(word, pos)
            spans.append((start, start + len(word)))
            pos = start + len(word)
        return spans

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(t.split()) + 2 for t in texts]

    def encode_packed(self, texts: Sequence[str]) -> Packed:
        """Every token of "<id> w w" is <id>, so the runner's gather can be checked."""
        ids = [[int(t.split()[0]) if t.split()[0].isdigit() else -1] * n
               for t, n in zip(texts, self.count_tokens(texts), strict=True)]  # fmt: skip
        lengths = np.array([len(i) for i in ids], dtype=np.int64)
        return Packed.of(np.array([x for i in ids for x in i], dtype=np.int64), lengths)


class FakeEmbedder:
    """Texts look like "<id> w w w"; the embedding is one-hot at <id>.

    Records every batch it receives. Clear `gate` to hold the model busy inside embed_batch.
    """

    def __init__(self, max_tokens: int = 512, fail_on: str | None = None) -> None:
        self._spec = ModelSpec(
            name="fake", revision="0", fingerprint="f", dim=DIM, metric="cosine",
            max_tokens=max_tokens,
        )  # fmt: skip
        self._tokenizer = FakeTokenizer()
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.fail_on = fail_on

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def tokenizer(self) -> FakeTokenizer:
        return self._tokenizer

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        self.batches.append(list(texts))
        assert encoded is not None and encoded.size == len(texts)  # tokenized at admission
        for text, start, length in zip(texts, encoded.starts, encoded.lengths, strict=True):
            want = int(text.split()[0]) if text.split()[0].isdigit() else -1
            assert (encoded.flat[start : start + length] == want).all(), text
        assert self.gate.wait(10), "test gate never released"
        if self.fail_on is not None and any(self.fail_on in t for t in texts):
            raise ValueError("model blew up")
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for row, text in enumerate(texts):
            out[row, int(text.split()[0]) % DIM] = 1.0
        return out

    def seen(self) -> list[str]:
        return [t for batch in self.batches for t in batch]


def text(i: int, words: int = 1) -> str:
    return " ".join([str(i)] + ["w"] * (words - 1))


def ids(vectors: np.ndarray) -> list[int]:
    return [int(i) for i in np.argmax(vectors, axis=1)]


def run(coro: Coroutine[Any, Any, T]) -> T:
    async def guarded() -> T:
        return await asyncio.wait_for(coro, 10)

    return asyncio.run(guarded())


async def wait_until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < deadline, "condition never became true"
        await asyncio.sleep(0.001)


async def settle() -> None:
    """Let the owner coroutine run (it is on the same loop) a few times."""
    for _ in range(5):
        await asyncio.sleep(0.01)


@asynccontextmanager
async def started(
    fake: FakeEmbedder, metrics: Metrics | None = None, **config: Any
) -> AsyncIterator[Batcher]:
    batcher = Batcher(fake, BatcherConfig(**config), metrics)
    await batcher.start()
    try:
        yield batcher
    finally:
        fake.gate.set()
        await batcher.stop()


async def occupy(batcher: Batcher, fake: FakeEmbedder) -> asyncio.Task[np.ndarray]:
    """Hold the model busy with one blocker text (id 0) until fake.gate is set."""
    fake.gate.clear()
    before = len(fake.batches)
    task = asyncio.create_task(batcher.embed([text(0)]))
    await wait_until(lambda: len(fake.batches) > before)
    return task


def test_results_in_input_order_for_mixed_lengths() -> None:
    fake = FakeEmbedder()

    async def main() -> None:
        async with started(fake, max_batch_size=4, max_batch_tokens=64) as b:
            texts = [text(i, words=(i * 7) % 13 + 1) for i in range(1, 40)]
            out = await b.embed(texts)
            assert out.dtype == np.float32 and out.shape == (len(texts), DIM)
            assert ids(out) == list(range(1, 40))
            # large request (tokenized off the loop) and the empty request
            many = [text(i, words=i % 5 + 1) for i in range(100)]
            assert ids(await b.embed(many, lane="bulk")) == list(range(100))
            assert (await b.embed([])).shape == (0, DIM)
            assert b.pending() == {"query": 0, "bulk": 0}

    run(main())
    assert len(fake.batches) > 1


def test_batches_respect_size_and_padded_token_limits_and_are_length_sorted() -> None:
    fake = FakeEmbedder(max_tokens=16)
    tok = FakeTokenizer()

    async def main() -> None:
        async with started(fake, max_batch_size=5, max_batch_tokens=40) as b:
            blocker = await occupy(b, fake)
            reqs = [
                [text(40 * r + i, words=(r * 5 + i * 3) % 20 + 1) for i in range(r % 4 + 1)]
                for r in range(1, 12)
            ]
            tasks = [asyncio.create_task(b.embed(r)) for r in reqs]
            await settle()
            fake.gate.set()
            results = await asyncio.gather(*tasks)
            await blocker
            for req, out in zip(reqs, results, strict=True):
                assert ids(out) == [int(t.split()[0]) for t in req]

    run(main())
    for batch in fake.batches:
        counts = [min(c, 16) for c in tok.count_tokens(batch)]
        assert len(batch) <= 5
        assert len(batch) == 1 or len(batch) * max(counts) <= 40
        assert counts == sorted(counts)
    assert len(fake.batches) > 3


def test_bulk_work_is_batched_by_length_and_the_oldest_text_goes_first() -> None:
    fake = FakeEmbedder(max_tokens=64)
    tok = FakeTokenizer()
    rng = np.random.default_rng(7)
    lengths = rng.integers(1, 60, size=256).tolist()

    async def main() -> None:
        async with started(fake, max_batch_size=16, max_batch_tokens=1024) as b:
            blocker = await occupy(b, fake)
            docs = [text(100 + i, words=n) for i, n in enumerate(lengths)]
            task = asyncio.create_task(b.embed(docs, lane="bulk"))
            await settle()
            fake.gate.set()
            assert ids(await task) == [100 + i for i in range(len(docs))]
            await blocker

    run(main())
    bulk = fake.batches[1:]
    assert sum(len(batch) for batch in bulk) == len(lengths)
    assert text(100, lengths[0]) in bulk[0]  # the oldest text is never passed over
    real = padded = 0
    for batch in bulk:
        counts = tok.count_tokens(batch)
        assert counts == sorted(counts) and len(batch) <= 16
        real, padded = real + sum(counts), padded + len(batch) * max(counts)
    arrival = [n + 2 for n in lengths]  # the same texts cut in arrival order, for comparison
    in_order = sum(16 * max(arrival[i : i + 16]) for i in range(0, len(arrival), 16))
    assert padded / real < 1.3 and padded < 0.75 * in_order, (padded / real, in_order / real)


def test_single_text_longer_than_token_budget_is_a_batch_of_its_own() -> None:
    fake = FakeEmbedder(max_tokens=64)

    async def main() -> None:
        async with started(fake, max_batch_tokens=20) as b:
            out = await b.embed([text(1, 2), text(2, 50), text(3, 2)])
            assert ids(out) == [1, 2, 3]

    run(main())
    assert [text(2, 50)] in fake.batches


def test_concurrent_callers_are_coalesced() -> None:
    fake = FakeEmbedder()
    callers = 20

    async def main() -> None:
        async with started(fake, max_batch_size=8) as b:
            blocker = await occupy(b, fake)
            tasks = [asyncio.create_task(b.embed([text(i)])) for i in range(1, callers + 1)]
            await settle()
            fake.gate.set()
            outs = await asyncio.gather(*tasks)
            await blocker
            assert [ids(o) for o in outs] == [[i] for i in range(1, callers + 1)]

    run(main())
    calls_for_callers = len(fake.batches) - 1
    assert calls_for_callers < callers
    assert calls_for_callers == 3  # 20 texts in batches of at most 8


def test_idle_model_takes_a_lone_request_without_waiting_for_company() -> None:
    fake = FakeEmbedder()

    async def main() -> None:
        async with started(fake, max_wait_ms=2.0) as b:
            t0 = time.monotonic()
            await b.embed([text(1)])
            assert time.monotonic() - t0 < 5.0

    run(main())
    assert fake.batches == [[text(1)]]


def test_query_lane_overtakes_queued_bulk_work() -> None:
    fake = FakeEmbedder()

    async def main() -> None:
        async with started(fake, max_batch_size=4) as b:
            blocker = await occupy(b, fake)
            bulk = asyncio.create_task(b.embed([text(i) for i in range(100, 116)], lane="bulk"))
            await settle()
            query = asyncio.create_task(b.embed([text(1), text(2)], lane="query"))
            await settle()
            fake.gate.set()
            assert ids(await query) == [1, 2]
            assert ids(await bulk) == list(range(100, 116))
            await blocker

    run(main())
    batches = fake.batches
    q_batch = next(n for n, batch in enumerate(batches) if text(1) in batch)
    assert text(2) in batches[q_batch]
    # At most one full bulk batch was already handed to the model before the query arrived.
    assert q_batch <= 2
    last_bulk = max(n for n, batch in enumerate(batches) if any(int(t) >= 100 for t in batch))
    assert last_bulk > q_batch
    assert sum(len(b) for b in batches) == 1 + 16 + 2


def test_overloaded_is_immediate_and_bulk_is_capped_while_queries_are_admitted() -> None:
    fake = FakeEmbedder()
    metrics = Metrics()

    async def main() -> None:
        async with started(fake, metrics, max_pending=10, max_pending_bulk=6) as b:
            blocker = await occupy(b, fake)  # 1 query text pending
            bulk = asyncio.create_task(b.embed([text(i) for i in range(10, 16)], lane="bulk"))
            await settle()
            assert b.pending() == {"query": 1, "bulk": 6}
            with pytest.raises(Overloaded) as bulk_full:
                await b.embed([text(20)], lane="bulk")
            assert bulk_full.value.retry_after >= 0.1
            assert "retry" in bulk_full.value.message
            query = asyncio.create_task(b.embed([text(i) for i in range(30, 33)]))
            await settle()
            assert b.pending() == {"query": 4, "bulk": 6}
            with pytest.raises(Overloaded) as full:
                await b.embed([text(40)])
            assert full.value.retry_after >= 0.1
            with pytest.raises(InvalidInput, match="split"):
                await b.embed([text(i) for i in range(11)])
            with pytest.raises(InvalidInput, match="split"):
                await b.embed([text(i) for i in range(7)], lane="bulk")
            fake.gate.set()
            await asyncio.gather(blocker, bulk, query)
            assert b.pending() == {"query": 0, "bulk": 0}
            # room again
            assert ids(await b.embed([text(i) for i in range(10)])) == list(range(10))

    run(main())
    assert (
        metrics.registry.get_sample_value("embedstack_batcher_rejected_total", {"model": "fake"})
        == 2
    )
    assert not any(t in fake.seen() for t in (text(20), text(40)))


def test_cancelled_caller_never_reaches_the_model() -> None:
    fake = FakeEmbedder()
    metrics = Metrics()

    async def main() -> None:
        async with started(fake, metrics, max_batch_size=4) as b:
            blocker = await occupy(b, fake)
            # 3 texts: not a full batch, so it stays queued while the model is busy
            small = asyncio.create_task(b.embed([text(i) for i in range(10, 13)]))
            await settle()
            assert b.pending() == {"query": 4, "bulk": 0}
            small.cancel()
            await settle()
            assert b.pending() == {"query": 1, "bulk": 0}  # released at once
            # 4 texts: a full batch, handed to the runner ahead of time
            full = asyncio.create_task(b.embed([text(i) for i in range(20, 24)], lane="bulk"))
            await settle()
            full.cancel()
            other = asyncio.create_task(b.embed([text(30)], lane="bulk"))
            await settle()
            assert b.pending() == {"query": 1, "bulk": 5}  # the handed-over batch is in flight
            fake.gate.set()
            await blocker
            assert ids(await other) == [30]
            for task in (small, full):
                with pytest.raises(asyncio.CancelledError):
                    await task
            await wait_until(lambda: b.pending() == {"query": 0, "bulk": 0})

    run(main())
    seen = fake.seen()
    assert text(30) in seen
    assert not any(text(i) in seen for i in [*range(10, 13), *range(20, 24)])
    assert (
        metrics.registry.get_sample_value("embedstack_batcher_dropped_total", {"model": "fake"})
        == 7
    )


def test_model_error_fails_only_that_batch() -> None:
    fake = FakeEmbedder(fail_on="boom")

    async def main() -> None:
        async with started(fake, max_batch_size=3) as b:
            blocker = await occupy(b, fake)
            a = asyncio.create_task(b.embed([text(1, 1) + " boom", text(2)]))
            c = asyncio.create_task(b.embed([text(3)]))
            d = asyncio.create_task(b.embed([text(4), text(5)]))
            await settle()
            fake.gate.set()
            await blocker
            for failed in (a, c):
                with pytest.raises(ValueError, match="blew up"):
                    await failed
            assert ids(await d) == [4, 5]
            assert ids(await b.embed([text(6)])) == [6]
            assert b.pending() == {"query": 0, "bulk": 0}

    run(main())
    assert any("boom" in t for t in fake.batches[1])


def test_stop_fails_pending_with_unavailable() -> None:
    fake = FakeEmbedder()

    async def main() -> None:
        b = Batcher(fake, BatcherConfig(max_batch_size=2))
        with pytest.raises(Unavailable):
            await b.embed([text(1)])  # not started
        await b.start()
        blocker = await occupy(b, fake)
        waiting = [asyncio.create_task(b.embed([text(i)], lane="bulk")) for i in range(1, 6)]
        await settle()
        stopping = asyncio.create_task(b.stop())
        await settle()
        for task in [blocker, *waiting]:
            assert task.done()
            with pytest.raises(Unavailable, match="shutting down"):
                await task
        fake.gate.set()  # let the runner thread finish its batch and exit
        await stopping
        with pytest.raises(Unavailable):
            await b.embed([text(9)])
        assert b.pending() == {"query": 0, "bulk": 0}

    run(main())
    assert text(5) not in fake.seen()


def test_metrics_are_recorded() -> None:
    fake = FakeEmbedder()
    metrics = Metrics()

    async def main() -> None:
        async with started(fake, metrics, max_batch_size=8) as b:
            await b.embed([text(1, 3), text(2, 5)])
            await b.embed([text(i) for i in range(3, 6)], lane="bulk")

    run(main())
    sample = metrics.registry.get_sample_value
    model = {"model": "fake"}
    assert sample("embedstack_batch_size_count", model) == 2
    assert sample("embedstack_batch_size_sum", model) == 5
    assert sample("embedstack_batch_tokens_sum", model) == 2 * 7 + 3 * 3
    assert sample("embedstack_inference_duration_seconds_count", model) == 2
    assert sample("embedstack_embedded_texts_total", {"model": "fake", "lane": "query"}) == 2
    assert sample("embedstack_embedded_texts_total", {"model": "fake", "lane": "bulk"}) == 3
    for lane in ("query", "bulk"):
        assert sample("embedstack_batcher_pending_texts", {"model": "fake", "lane": lane}) == 0


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        BatcherConfig(max_batch_size=0)
    with pytest.raises(ValueError):
        BatcherConfig(max_wait_ms=-1)


class SlowFake(FakeEmbedder):
    """FakeEmbedder that takes `delay` seconds per batch (a measurable service time)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        time.sleep(self.delay)
        return super().embed_batch(texts, encoded)


def test_deadline_admission_refuses_what_would_miss_and_admits_what_fits() -> None:
    fake = SlowFake(0.02)
    metrics = Metrics()

    async def main() -> None:
        async with started(fake, metrics, max_batch_size=1) as b:
            assert b.estimate_wait([3]) is None  # nothing measured: nothing refused
            await b.embed([text(1)], deadline=time.monotonic() + 60)
            idle = b.estimate_wait([3])
            assert idle is not None and idle >= 0.015  # about one batch
            blocker = await occupy(b, fake)
            queued = [asyncio.create_task(b.embed([text(10 + i)])) for i in range(10)]
            await settle()
            busy = b.estimate_wait([3])
            assert busy is not None and busy >= 10 * 0.015  # ten batches of one ahead of it
            with pytest.raises(Overloaded, match="budget") as refused:
                await b.embed([text(50)], deadline=time.monotonic() + busy / 4)
            assert refused.value.retry_after > 0
            assert b.pending()["query"] == 11  # the refused text was never queued
            fits = asyncio.create_task(b.embed([text(51)], deadline=time.monotonic() + 60))
            fake.gate.set()
            await asyncio.gather(blocker, *queued)
            assert ids(await fits) == [51]

    run(main())
    assert text(50) not in fake.seen()
    sample = metrics.registry.get_sample_value
    assert sample("embedstack_shed_total", {"stage": "embed", "reason": "budget"}) == 1
    # observed at each admission with a deadline once the model's speed is known
    assert sample("embedstack_estimated_wait_seconds_count", {"stage": "embed"}) == 2


def test_texts_whose_deadline_passes_in_the_queue_never_reach_the_model() -> None:
    fake = FakeEmbedder()
    metrics = Metrics()

    async def main() -> None:
        async with started(fake, metrics, max_batch_size=4) as b:
            blocker = await occupy(b, fake)  # model busy, nothing measured yet: all admitted
            late = asyncio.create_task(b.embed([text(7)], deadline=time.monotonic() + 0.05))
            ready = asyncio.create_task(  # a full batch: handed to the runner while it waits
                b.embed([text(i) for i in range(20, 24)], deadline=time.monotonic() + 0.05)
            )
            ok = asyncio.create_task(b.embed([text(8)], deadline=time.monotonic() + 60))
            await asyncio.sleep(0.2)
            fake.gate.set()
            await blocker
            for doomed in (late, ready):
                with pytest.raises(Overloaded, match="dropped"):
                    await doomed
            assert ids(await ok) == [8]
            assert b.pending() == {"query": 0, "bulk": 0}

    run(main())
    assert not {text(7), *(text(i) for i in range(20, 24))} & set(fake.seen())
    sample = metrics.registry.get_sample_value
    assert sample("embedstack_deadline_dropped_total", {"stage": "embed"}) == 5


def test_bulk_keeps_a_minimum_share_while_queries_wait() -> None:
    fake = FakeEmbedder()

    async def main() -> None:
        async with started(fake, max_batch_size=1, bulk_every=3) as b:
            blocker = await occupy(b, fake)
            bulk = asyncio.create_task(b.embed([text(i) for i in range(100, 104)], lane="bulk"))
            await settle()
            queries = [asyncio.create_task(b.embed([text(i)])) for i in range(1, 13)]
            await settle()
            fake.gate.set()
            await asyncio.gather(blocker, bulk, *queries)

    run(main())
    kinds = ["b" if int(batch[0].split()[0]) >= 100 else "q" for batch in fake.batches[1:]]
    # at most one bulk batch was handed over before queries came; then one per 3 query batches
    run_lengths = "".join(kinds).lstrip("b").split("b")
    assert kinds.count("b") == 4 and all(len(r) <= 3 for r in run_lengths[:-1]), kinds


def test_an_idle_model_admits_even_a_tight_deadline_so_its_speed_stays_measured() -> None:
    fake = SlowFake(0.05)

    async def main() -> None:
        async with started(fake, max_batch_size=1) as b:
            await b.embed([text(1)])
            # nothing ahead: admitted although one batch takes longer than the budget (else a
            # bad estimate could refuse everything forever, with nothing left to correct it)
            assert ids(await b.embed([text(2)], deadline=time.monotonic() + 0.01)) == [2]

    run(main())
