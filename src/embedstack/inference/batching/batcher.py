"""Dynamic batching in front of one Embedder: two priority lanes, admission control, cancellation.

All queue state belongs to one owner coroutine on the event loop; the model runs in one dedicated
runner thread, so it sees one batch at a time. Texts are tokenized once, at admission (in a worker
thread for large requests, so in parallel with the model), and the runner hands the token ids to
the model with each batch: tokenizing batch n+1 overlaps the forward pass of batch n. While batch
n runs, the owner may already hand over a full batch n+1 (the handoff holds at most one ready
batch, so work does not pile up ahead of the model and the query lane keeps its priority). A batch
that is not full is cut only when the model is idle and the oldest waiting text has waited
`max_wait_ms` (default 0: continuous batching, as TEI does; texts that arrive while the model
runs form the next batch, so batches grow with load and a lone query never waits). Which texts
go together is decided in batch_plan.py.

Deadlines (admission.py): a query may carry a deadline. It is refused at once (Overloaded) when
the measured service time says it would finish past it, and dropped, before it costs model time,
if the deadline passes while it waits. While queries are about, bulk batches are cut to
`bulk_batch_ms` of model time, and bulk keeps a minimum share of one batch per `bulk_every`
query batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from embedstack.errors import InvalidInput, Overloaded, Unavailable
from embedstack.inference.backend import Embedder
from embedstack.inference.batching import admission
from embedstack.inference.batching.plan import LANES, Item, Lane, Pending, gather, plan, take
from embedstack.inference.batching.tokens import Packed
from embedstack.obs.metrics import Metrics

log = logging.getLogger(__name__)

_READY_BATCHES = 1  # batches handed to the runner ahead of the running one
_OFF_LOOP_TOKENIZE = 16  # requests with more texts are tokenized in a worker thread
_MIN_RETRY_AFTER = 0.1
_MAX_RETRY_AFTER = 60.0
_DEFAULT_RETRY_AFTER = 1.0
_QUERY_ACTIVE_S = 1.0  # bulk batches stay small this long after the last query
_ESTIMATE_SAFETY = 1.2  # estimated waits are stretched by this before comparing to deadlines


@dataclass(frozen=True)
class BatcherConfig:
    max_batch_size: int = 64  # texts per model call
    max_batch_tokens: int = 16384  # padded tokens per call: len(batch) * max(token counts)
    max_wait_ms: float = 0.0  # how long the first text may wait for company while the model idles
    max_pending: int = 8192  # admitted-but-unfinished texts, all lanes; beyond -> Overloaded
    max_pending_bulk: int = 4096  # the bulk lane alone may not take all the room from queries
    bulk_every: int = 4  # while queries wait, one bulk batch per this many query batches
    bulk_batch_ms: float = 20.0  # model time of a bulk batch while queries are about

    def __post_init__(self) -> None:
        names = ("max_batch_size", "max_batch_tokens", "max_pending", "max_pending_bulk",
                 "bulk_every")  # fmt: skip
        for name in names:
            if getattr(self, name) < 1:
                raise ValueError(f"BatcherConfig.{name} must be at least 1")
        if self.max_wait_ms < 0:
            raise ValueError("BatcherConfig.max_wait_ms must not be negative")
        if self.bulk_batch_ms <= 0:
            raise ValueError("BatcherConfig.bulk_batch_ms must be positive")


@dataclass(eq=False)
class _Batch:
    items: list[Item]  # sorted by token count
    estimate: float = 0.0  # model seconds, as estimated at the cut
    started: float | None = None  # time.monotonic() when the runner began it


@dataclass(eq=False)
class _Outcome:
    """What the runner reports back for one batch."""

    batch: _Batch
    live: list[int]  # positions in batch.items that were sent to the model
    vectors: np.ndarray | None
    error: BaseException | None
    seconds: float


class Batcher:
    """Coalesces embed() calls for one model into batches bounded by size and padded tokens."""

    def __init__(
        self, embedder: Embedder, config: BatcherConfig, metrics: Metrics | None = None
    ) -> None:
        self._embedder = embedder
        self._config = config
        spec = embedder.spec
        self._model = spec.name
        self._dim = spec.dim
        self._max_tokens = max(1, spec.max_tokens)
        self._metrics = metrics
        self._queues: dict[Lane, deque[Pending]] = {lane: deque() for lane in LANES}
        self._pending: dict[Lane, int] = dict.fromkeys(LANES, 0)
        self._open: set[Pending] = set()
        self._outstanding = 0  # batches handed to the runner and not yet completed
        self._rate: float | None = None  # texts per second of model time (EWMA)
        self._service = admission.ServiceModel()
        self._inflight: deque[_Batch] = deque()  # handed to the runner, in order
        self._query_streak = 0  # query batches cut since the last bulk one while bulk waited
        self._last_query = -_QUERY_ACTIVE_S  # time.monotonic() of the last query
        self._handoff: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._owner: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    # lifecycle

    async def start(self) -> None:
        """Start the owner task on the running loop and the model-runner thread."""
        if self._stopped:
            raise RuntimeError("a stopped Batcher cannot be restarted; create a new one")
        if self._owner is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._thread = threading.Thread(
            target=self._run_model, name=f"embedstack-batcher-{self._model}", daemon=True
        )
        self._thread.start()
        self._owner = self._loop.create_task(self._own(), name=f"batcher-owner-{self._model}")
        self._owner.add_done_callback(self._owner_done)

    async def stop(self) -> None:
        """Fail every unfinished request with Unavailable and join the runner thread."""
        if self._stopped:
            return
        self._stopped = True
        owner, self._owner = self._owner, None
        if owner is not None:
            owner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await owner
        self._fail_all(Unavailable(f"model {self._model!r} is shutting down; retry the request"))
        thread, self._thread = self._thread, None
        if thread is not None:
            self._handoff.put(None)
            await asyncio.to_thread(thread.join)

    # public API

    async def embed(
        self, texts: Sequence[str], lane: Lane = "query", deadline: float | None = None
    ) -> np.ndarray:
        """Embed `texts`; returns float32 (len(texts), dim) in input order."""
        vectors, _ = await self.embed_counted(texts, lane, deadline)
        return vectors

    async def embed_counted(
        self, texts: Sequence[str], lane: Lane = "query", deadline: float | None = None
    ) -> tuple[np.ndarray, int]:
        """Embed `texts`; returns the vectors and the tokens the model read (usage).

        `deadline` (time.monotonic()): refuse with Overloaded, without queueing, when the texts
        would be embedded after it; drop them unembedded (Overloaded) if it passes in the queue.
        """
        if lane not in LANES:
            raise InvalidInput(f"unknown lane {lane!r}; use one of {', '.join(LANES)}")
        n = len(texts)
        if n == 0:
            return np.zeros((0, self._dim), dtype=np.float32), 0
        self._check_running()
        if lane == "query":
            self._last_query = time.monotonic()
        self._admit(n, lane)
        self._adjust(lane, n)  # reserve room before tokenizing, so admission stays exact
        try:
            tokenizing = time.perf_counter()
            if n > _OFF_LOOP_TOKENIZE:
                encoded = await asyncio.to_thread(self._encode, texts)
            else:
                encoded = self._encode(texts)
            if self._metrics is not None:
                stage = self._metrics.stage_seconds.labels("tokenize", lane)
                stage.observe(time.perf_counter() - tokenizing)
            self._check_running()
            tokens = np.clip(encoded.lengths, 1, self._max_tokens).tolist()
            if deadline is not None:
                self._admit_deadline(tokens, lane, deadline)
        except BaseException as exc:
            self._adjust(lane, -n)
            if isinstance(exc, asyncio.CancelledError):
                self._count_dropped(n)
            raise
        assert self._loop is not None and self._wake is not None
        req = Pending(
            texts=texts,
            encoded=encoded,
            tokens=tokens,
            lane=lane,
            arrival=self._loop.time(),
            future=self._loop.create_future(),
            out=np.empty((n, self._dim), dtype=np.float32),
            deadline=deadline,
        )
        self._open.add(req)
        self._queues[lane].append(req)
        self._wake.set()
        try:
            return await req.future, sum(tokens)
        except asyncio.CancelledError:
            if not req.closed:
                req.cancelled = True
                self._count_dropped(req.queued)
                self._close(req)
                self._wake.set()
            raise

    def failure(self) -> str | None:
        """Why this started batcher can no longer serve (its owner task or model-runner thread
        died, or it was stopped), or None while it serves."""
        if self._stopped:
            return f"the batcher of model {self._model!r} is stopped"
        if self._owner is not None and self._owner.done():
            return f"the batcher owner of model {self._model!r} died"
        if self._thread is not None and not self._thread.is_alive():
            return f"the model-runner thread of {self._model!r} died"
        return None

    def pending(self) -> dict[str, int]:
        """Admitted-but-unfinished texts per lane."""
        return {lane: self._pending[lane] for lane in LANES}

    def oldest_waits(self) -> dict[str, float]:
        """Seconds the oldest text still queued in each lane has waited (0 when none)."""
        now = self._loop.time() if self._loop is not None else 0.0
        out: dict[str, float] = {}
        for lane, q in self._queues.items():
            waiting = [req.arrival for req in q if not req.closed and req.queued]
            out[lane] = max(0.0, now - min(waiting)) if waiting else 0.0
        return out

    def estimate_wait(self, tokens: Sequence[int], lane: Lane = "query") -> float | None:
        """Estimated seconds from now until texts of these token counts, queued now, are
        embedded; None while the model's speed is not measured yet."""
        if not self._service.known:
            return None
        cfg, now = self._config, time.monotonic()
        residual = 0.0
        for batch in self._inflight:
            left = batch.estimate
            if batch.started is not None:
                left -= now - batch.started
            residual += max(0.0, left)
        lanes = LANES[: LANES.index(lane) + 1]  # the lanes ahead of this one, and itself
        ahead = (
            req.tokens[i]
            for ln in lanes
            for req in self._queues[ln]
            if not req.closed
            for i in req.left
        )
        queued, batches = admission.queue_seconds(
            self._service, ahead, tokens, cfg.max_batch_size, cfg.max_batch_tokens
        )
        if lane == "query" and self._pending["bulk"]:
            slices = admission.bulk_slices(batches, self._query_streak, cfg.bulk_every)
            queued += slices * cfg.bulk_batch_ms / 1000.0
        return residual + queued

    # admission

    def _check_running(self) -> None:
        if self._stopped:
            raise Unavailable(f"model {self._model!r} is shutting down; retry the request")
        if self._owner is None:
            raise Unavailable(f"model {self._model!r} is not started yet; retry shortly")

    def _admit(self, n: int, lane: Lane) -> None:
        cfg = self._config
        lane_limit = (
            cfg.max_pending if lane == "query" else min(cfg.max_pending, cfg.max_pending_bulk)
        )
        if n > lane_limit:
            raise InvalidInput(
                f"request has {n} texts but the {lane} lane admits at most {lane_limit} at once; "
                "split the request into smaller ones"
            )
        total = sum(self._pending.values())
        over_total = total + n > cfg.max_pending
        over_bulk = lane == "bulk" and self._pending["bulk"] + n > cfg.max_pending_bulk
        if over_total or over_bulk:
            if self._metrics is not None:
                self._metrics.batcher_rejected.labels(model=self._model).inc()
            retry_after = self._retry_after()
            which = "bulk lane" if over_bulk and not over_total else "queue"
            raise Overloaded(
                f"the {which} of model {self._model!r} is full ({total} texts pending); "
                f"retry after {retry_after:.1f}s or lower client concurrency",
                retry_after=retry_after,
            )

    def check_deadline(self, tokens: Sequence[int], deadline: float, lane: Lane = "query") -> None:
        """Overloaded, at once, if texts of these token counts queued now would be embedded
        after `deadline` (a cheap early check; embed() checks again with the real texts)."""
        self._admit_deadline(tokens, lane, deadline)

    def _admit_deadline(self, tokens: Sequence[int], lane: Lane, deadline: float) -> None:
        """Refuse (Overloaded) texts that would be embedded after `deadline`."""
        available = deadline - time.monotonic()
        lanes = LANES[: LANES.index(lane) + 1]
        ahead = any(r.queued and not r.closed for ln in lanes for r in self._queues[ln])
        if available > 0 and not self._inflight and not ahead:
            return  # nothing ahead: it runs now (and keeps the speed measured)
        estimate = self.estimate_wait(tokens, lane)
        if estimate is not None:
            estimate *= _ESTIMATE_SAFETY
            if self._metrics is not None:
                self._metrics.estimated_wait.labels(stage="embed").observe(estimate)
        if available > 0 and (estimate is None or estimate <= available):
            return
        if self._metrics is not None:
            self._metrics.batcher_rejected.labels(model=self._model).inc()
            self._metrics.shed.labels(stage="embed", reason="budget").inc()
        wait = estimate or 0.0
        retry_after = min(
            max(admission.retry_after(wait, available), _MIN_RETRY_AFTER), _MAX_RETRY_AFTER
        )
        raise Overloaded(
            f"model {self._model!r} would take about {wait * 1000:.0f} ms to embed this, past "
            f"the request's latency budget ({max(available, 0) * 1000:.0f} ms left); retry after "
            f"{retry_after:.1f}s, lower client concurrency or send a larger budget",
            retry_after=retry_after,
        )

    def _retry_after(self) -> float:
        if not self._rate:
            return _DEFAULT_RETRY_AFTER
        backlog = sum(self._pending.values()) / self._rate
        return min(max(backlog, _MIN_RETRY_AFTER), _MAX_RETRY_AFTER)

    def _encode(self, texts: Sequence[str]) -> Packed:
        encoded = self._embedder.tokenizer.encode_packed(texts)
        if encoded.size != len(texts):
            raise RuntimeError(
                f"tokenizer of {self._model!r} returned {encoded.size} encodings "
                f"for {len(texts)} texts"
            )
        return encoded

    # bookkeeping (event loop only)

    def _adjust(self, lane: Lane, delta: int) -> None:
        self._pending[lane] += delta
        if self._metrics is not None:
            gauge = self._metrics.batcher_pending.labels(model=self._model, lane=lane)
            gauge.set(self._pending[lane])

    def _count_dropped(self, n: int) -> None:
        if n and self._metrics is not None:
            self._metrics.batcher_dropped.labels(model=self._model).inc(n)

    def _expired_error(self) -> Overloaded:
        return Overloaded(
            f"the request waited past its latency budget for model {self._model!r} and was "
            "dropped unembedded; retry, lower client concurrency or send a larger budget",
            retry_after=max(self._retry_after(), _MIN_RETRY_AFTER),
        )

    def _expire(self, now: float) -> None:
        """Drop queued texts whose deadline has passed (before they cost model time)."""
        for q in self._queues.values():
            for req in q:
                if req.deadline is not None and not req.closed and now > req.deadline:
                    self._drop_expired(req)

    def _drop_expired(self, req: Pending) -> None:
        """Fail a request whose deadline passed; its queued texts are dropped here, its texts
        already in a batch when that batch skips them."""
        req.expired = True
        self._count_expired(req.queued)
        self._close(req, error=self._expired_error())

    def _count_expired(self, n: int) -> None:
        if n and self._metrics is not None:
            self._metrics.deadline_dropped.labels(stage="embed").inc(n)

    def _close(
        self, req: Pending, result: np.ndarray | None = None, error: BaseException | None = None
    ) -> None:
        """Resolve a request and release its texts that were never taken into a batch."""
        if req.closed:
            return
        req.closed = True
        self._open.discard(req)
        if req.queued:
            self._adjust(req.lane, -req.queued)
            req.left = []
        if not req.future.done():
            if error is not None:
                req.future.set_exception(error)
            elif result is not None:
                req.future.set_result(result)
            else:
                req.future.cancel()

    def _fail_all(self, error: BaseException) -> None:
        for req in list(self._open):
            self._close(req, error=error)
        for q in self._queues.values():
            q.clear()

    # the owner

    async def _own(self) -> None:
        assert self._loop is not None and self._wake is not None
        max_wait = self._config.max_wait_ms / 1000.0
        while True:
            self._expire(time.monotonic())
            self._purge()
            timeout: float | None = None
            if self._outstanding <= _READY_BATCHES and self._has_queued():
                items, full = self._plan()
                now = self._loop.time()
                deadline = self._oldest() + max_wait
                if full or (self._outstanding == 0 and now >= deadline):
                    self._dispatch(items)
                    continue
                if self._outstanding == 0:
                    timeout = deadline - now
                # else: the model is busy; keep accumulating until it is free
            await self._sleep(timeout)

    async def _sleep(self, timeout: float | None) -> None:
        assert self._wake is not None
        if timeout is None:
            await self._wake.wait()
        else:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
        self._wake.clear()

    def _owner_done(self, task: asyncio.Task[None]) -> None:
        if task.cancelled() or self._stopped:
            return
        exc = task.exception()
        log.error("batcher owner for %r died", self._model, exc_info=exc)
        self._stopped = True
        self._fail_all(Unavailable(f"the batcher of model {self._model!r} failed; retry later"))
        self._handoff.put(None)

    def _purge(self) -> None:
        """Drop closed or fully taken requests from the heads of the lanes."""
        for q in self._queues.values():
            while q and (q[0].closed or q[0].queued == 0):
                q.popleft()

    def _has_queued(self) -> bool:
        return any(self._queues.values())

    def _oldest(self) -> float:
        return min(q[0].arrival for q in self._queues.values() if q)

    def _plan(self) -> tuple[list[Item], bool]:
        """The next batch: queries first; bulk cut to `bulk_batch_ms` of model time while
        queries are about, and given every `bulk_every`-th batch while queries wait."""
        cfg = self._config
        bulk_tokens: int | None = None
        querying = bool(self._pending["query"])
        if querying or time.monotonic() - self._last_query < _QUERY_ACTIVE_S:
            bulk_tokens = self._service.tokens_within(
                cfg.bulk_batch_ms / 1000.0, cfg.max_batch_tokens
            )
        bulk_turn = self._query_streak >= cfg.bulk_every
        return plan(self._queues, cfg.max_batch_size, cfg.max_batch_tokens, bulk_tokens, bulk_turn)

    def _dispatch(self, items: list[Item]) -> None:
        take(items)
        self._purge()
        items.sort(key=lambda item: item[0].tokens[item[1]])
        if any(req.lane == "query" for req, _ in items):
            bulk_waits = any(not req.closed and req.queued for req in self._queues["bulk"])
            self._query_streak = self._query_streak + 1 if bulk_waits else 0
        else:
            self._query_streak = 0
        longest = max((req.tokens[idx] for req, idx in items), default=0)
        batch = _Batch(items, estimate=self._service.seconds(len(items) * longest))
        self._outstanding += 1
        self._inflight.append(batch)
        self._handoff.put(batch)

    def _complete(self, outcome: _Outcome) -> None:
        """Runs on the loop when the runner finished (or skipped) a batch."""
        self._outstanding -= 1
        with contextlib.suppress(ValueError):
            self._inflight.remove(outcome.batch)
        batch, live, vectors, error = outcome.batch, outcome.live, outcome.vectors, outcome.error
        released: dict[Lane, int] = dict.fromkeys(LANES, 0)
        embedded: dict[Lane, int] = dict.fromkeys(LANES, 0)
        skipped = expired = 0
        live_set = set(live)
        for pos, (req, _) in enumerate(batch.items):
            released[req.lane] += 1
            if pos not in live_set:
                if req.cancelled:
                    skipped += 1
                elif req.expired or not req.closed:  # its deadline passed while it waited
                    expired += 1
                    if not req.closed:
                        self._drop_expired(req)
        for row, pos in enumerate(live):
            req, idx = batch.items[pos]
            if error is not None:
                self._close(req, error=error)
                continue
            assert vectors is not None
            embedded[req.lane] += 1
            if req.closed:
                continue
            req.out[idx] = vectors[row]
            req.remaining -= 1
            if req.remaining == 0:
                self._close(req, result=req.out)
        for lane in LANES:
            if released[lane]:
                self._adjust(lane, -released[lane])
        self._count_dropped(skipped)
        self._count_expired(expired)
        if live and error is None:
            seconds = outcome.seconds
            longest = max(batch.items[pos][0].tokens[batch.items[pos][1]] for pos in live)
            if seconds > 0:
                rate = len(live) / seconds
                self._rate = rate if self._rate is None else 0.8 * self._rate + 0.2 * rate
                self._service.observe(len(live) * longest, seconds)
            if self._metrics is not None:
                m, model = self._metrics, self._model
                padded = len(live) * longest
                real = sum(batch.items[pos][0].tokens[batch.items[pos][1]] for pos in live)
                m.batch_size.labels(model=model).observe(len(live))
                m.batch_tokens.labels(model=model).observe(padded)
                m.batch_padding.labels(model=model).observe(1 - real / max(1, padded))
                m.batch_fill.labels(model=model).observe(padded / self._config.max_batch_tokens)
                m.inference_latency.labels(model=model).observe(seconds)
                self._observe_stages(batch, live, seconds)
                for lane in LANES:
                    if embedded[lane]:
                        m.embedded_texts.labels(model=model, lane=lane).inc(embedded[lane])
        if self._wake is not None:
            self._wake.set()

    def _observe_stages(self, batch: _Batch, live: list[int], seconds: float) -> None:
        """batch_wait (admitted until its batch started, per request) and forward (per batch),
        by lane."""
        assert self._metrics is not None and self._loop is not None
        stage = self._metrics.stage_seconds
        started = batch.started if batch.started is not None else time.monotonic()
        lanes: set[str] = set()
        seen: set[int] = set()
        for pos in live:
            req = batch.items[pos][0]
            lanes.add(req.lane)
            if id(req) not in seen:
                seen.add(id(req))
                # arrival is loop.time(), which is time.monotonic() on the default loop
                stage.labels("batch_wait", req.lane).observe(max(0.0, started - req.arrival))
        for lane in lanes:
            stage.labels("forward", lane).observe(seconds)

    # the runner thread

    def _run_model(self) -> None:
        """Runner thread: embed handed-over batches one at a time."""
        while True:
            batch = self._handoff.get()
            if batch is None:
                return
            # Texts whose caller went away, or whose deadline passed, while the batch waited
            # are not worth model time.
            batch.started = now = time.monotonic()
            live = [
                pos
                for pos, (req, _) in enumerate(batch.items)
                if not req.closed and (req.deadline is None or now <= req.deadline)
            ]
            vectors: np.ndarray | None = None
            error: BaseException | None = None
            seconds = 0.0
            if live:
                started = time.perf_counter()
                try:
                    texts, encoded = gather([batch.items[pos] for pos in live])
                    vectors = np.asarray(self._embedder.embed_batch(texts, encoded), np.float32)
                    if vectors.shape != (len(texts), self._dim):
                        raise RuntimeError(
                            f"model {self._model!r} returned shape {vectors.shape} "
                            f"for {len(texts)} texts of dim {self._dim}"
                        )
                except Exception as exc:
                    error, vectors = exc, None
                seconds = time.perf_counter() - started
            outcome = _Outcome(batch, live, vectors, error, seconds)
            assert self._loop is not None
            try:
                self._loop.call_soon_threadsafe(self._complete, outcome)
            except RuntimeError:  # the loop is closed; nobody is waiting any more
                return
