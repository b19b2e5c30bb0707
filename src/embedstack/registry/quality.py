"""Quality signals of answered queries, computed off the hot path: drift (obs/drift.py), online
recall@k (obs/recall.py) and click feedback (obs/feedback.py), exported as gauges and shown in
a collection's stats.

The query route makes one call per answered query, `observe`, which only appends to bounded
structures and returns the query_id. A low-priority thread ("quality") does the rest:
- a sampled share of dense queries (`recall_fraction`, at most `recall_max_per_s`, through a
  bounded queue: what does not fit is dropped and counted) is searched again on the live index
  with its knobs in effect and exactly over the stored vectors; each gives a recall@k;
- every `interval_s` it refreshes the gauges (drift PSI/KS/alert, recall and its 95% bootstrap
  interval, click-through, clicked MRR);
- when the recall estimate of an index falls under its floor (with at least
  `recall_min_queries` checked queries), it re-tunes the index's search knobs on the sampled
  live queries (index/gate.raise_knobs, the training gate's search with live queries instead of
  leave-one-out samples), applies them, counts embedstack_recall_retunes_total and starts a new
  estimate window.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstack.errors import NotFound
from embedstack.index.common import brute_force
from embedstack.index.gate import MARGIN, raise_knobs
from embedstack.obs.drift import DriftMonitor
from embedstack.obs.feedback import FeedbackLog
from embedstack.obs.metrics import Metrics
from embedstack.obs.recall import RecallWindow, query_recall
from embedstack.registry.indexes import IndexManager, LiveIndex
from embedstack.storage.store import Store
from embedstack.threads import lower_priority

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (collection, space id)
DEFAULT_FLOOR = 0.9  # the trained types' default recall_floor (index/params.py)
EXACT_REFRESH_S = 10.0  # the exact copy of a space is re-read at most this often
SAMPLES_KEPT = 200  # sampled live queries (with their truth) kept per index for a re-tune
CAPPED_COOLDOWN_S = 300.0  # after a re-tune that could not reach the floor, wait this long


@dataclass(frozen=True)
class QualityConfig:
    drift: bool = True
    recall_fraction: float = 0.05  # share of dense queries re-run exactly (0 = off)
    recall_max_per_s: float = 5.0
    recall_queue: int = 64
    recall_k: int = 10
    recall_window: int = 200
    recall_min_queries: int = 30
    recall_max_vectors: int = 1_000_000  # spaces bigger than this get no exact re-run
    # exact re-runs take at most this share of the time (one check of t seconds is followed
    # by t * (1 / share - 1) without one): at 1M vectors an exact scan reads 1.5 GB, and at
    # recall_max_per_s those scans alone would keep a core and the memory bus busy, slowing
    # the queries they measure
    recall_time_share: float = 0.05
    retune: bool = True
    feedback: bool = True
    feedback_max_queries: int = 100_000
    drift_baseline: int = 500
    drift_window: int = 500
    drift_min_window: int = 100
    psi_alert: float = 0.25
    interval_s: float = 2.0


@dataclass
class _Exact:
    seq: int
    loaded: float
    ids: np.ndarray
    vectors: np.ndarray


@dataclass
class _Space:
    drift: DriftMonitor
    recall: RecallWindow
    samples: deque[tuple[np.ndarray, np.ndarray]]  # (query vector, exact top-k ids)
    retunes: list[dict[str, Any]] = field(default_factory=list)
    last_retune_at: float = 0.0


class QualityObserver:
    def __init__(
        self, store: Store, indexes: IndexManager, metrics: Metrics, config: QualityConfig,
        feedback: FeedbackLog | None = None,
    ) -> None:  # fmt: skip
        """`feedback`: the server's (durable) log of answered queries; default one in memory."""
        self._store = store
        self._indexes = indexes
        self._metrics = metrics
        self.config = config
        self.feedback = feedback or FeedbackLog(config.feedback_max_queries, config.recall_k)
        self._spaces: dict[Key, _Space] = {}
        self._guard = threading.Lock()
        self._queue: queue.Queue[tuple[str, str, np.ndarray]] = queue.Queue(config.recall_queue)
        self._exact: dict[Key, _Exact] = {}
        self._tokens = 1.0
        self._refilled = time.monotonic()
        self._resume_at = 0.0  # no exact re-run before this (time.monotonic())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the hot path -----------------------------------------------------------------------
    def observe(
        self, collection: str, space_id: str, vec: np.ndarray | None,
        hits: Sequence[dict[str, Any]], filtered: bool,
    ) -> str:  # fmt: skip
        """Take note of an answered query; returns its query_id. Cheap: appends only."""
        cfg = self.config
        if cfg.feedback:
            documents = list(dict.fromkeys(h["document_id"] for h in hits))  # ranked, distinct
            query_id = self.feedback.remember(collection, space_id, documents)
        else:
            query_id = uuid.uuid4().hex
        if vec is None:
            return query_id
        if cfg.drift and hits:
            self._space((collection, space_id)).drift.record(float(hits[0]["score"]), vec)
        if cfg.recall_fraction > 0 and not filtered and random.random() < cfg.recall_fraction:
            try:
                self._queue.put_nowait((collection, space_id, vec))
            except queue.Full:
                self._metrics.recall_samples.labels(collection, space_id, "dropped").inc()
        return query_id

    def _space(self, key: Key) -> _Space:
        found = self._spaces.get(key)
        if found is not None:
            return found
        cfg = self.config
        with self._guard:
            return self._spaces.setdefault(
                key,
                _Space(
                    DriftMonitor(
                        cfg.drift_baseline, cfg.drift_window, cfg.drift_min_window, cfg.psi_alert
                    ),
                    RecallWindow(cfg.recall_window),
                    deque(maxlen=SAMPLES_KEPT),
                ),
            )

    # -- requests from routes ---------------------------------------------------------------
    def reset_baseline(self, collection: str, space_id: str) -> None:
        """The next `drift_baseline` queries of the space become its new drift baseline (and the
        corpus centroid is read again: the change may have been the corpus)."""
        space = self._space((collection, space_id))
        space.drift.reset()
        space.drift.centroid = None

    def forget(self, collection: str) -> None:
        self.feedback.forget(collection)
        with self._guard:
            for key in [k for k in self._spaces if k[0] == collection]:
                del self._spaces[key]
                self._exact.pop(key, None)

    def report(self, collection: str, space_id: str) -> dict[str, Any]:
        """Drift, online recall (with floor and re-tunes) and feedback of one space."""
        key = (collection, space_id)
        space = self._space(key)
        if self.config.drift:
            self._ensure_centroid(key, space)
        estimate = space.recall.estimate()
        return {
            "drift": space.drift.evaluate().as_dict() if self.config.drift else None,
            "recall": {
                "k": self.config.recall_k,
                "floor": self._floor(key),
                "estimate": estimate.as_dict() if estimate is not None else None,
                "under_floor": estimate is not None and estimate.recall < self._floor(key),
                "knobs": self._knobs(key),
                "retunes": list(space.retunes),
                "enabled": self.config.recall_fraction > 0,
            },
            "feedback": self.feedback.stats(key).as_dict() if self.config.feedback else None,
        }

    def _floor(self, key: Key) -> float:
        with contextlib.suppress(NotFound):
            floor = self._indexes.get(*key).config.params.get("recall_floor")
            if floor:
                return float(floor)
        return DEFAULT_FLOOR

    def _knobs(self, key: Key) -> dict[str, int]:
        with contextlib.suppress(NotFound):
            return dict(getattr(self._indexes.get(*key).index, "knobs", {}))
        return {}

    # -- the background thread --------------------------------------------------------------
    def start(self) -> None:
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="quality", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        try:
            self.feedback.flush()
        except Exception:
            log.exception("remembered queries could not be written at stop")

    def _run(self) -> None:
        lower_priority()
        next_refresh = time.monotonic()
        while not self._stop.is_set():
            wait = max(0.0, next_refresh - time.monotonic())
            try:
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                item = None
            try:
                if item is not None:
                    self._check(*item)
                if time.monotonic() >= next_refresh:
                    self.feedback.flush()  # answered queries reach the durable side
                    self.refresh()
                    next_refresh = time.monotonic() + self.config.interval_s
            except Exception:
                log.exception("quality signal step failed; the next one carries on")
                self._metrics.maintenance_errors.labels("quality").inc()

    def _allowed(self) -> bool:
        """Token bucket of recall_max_per_s (burst 1 s)."""
        now = time.monotonic()
        if now < self._resume_at:
            return False
        rate = self.config.recall_max_per_s
        self._tokens = min(max(1.0, rate), self._tokens + (now - self._refilled) * rate)
        self._refilled = now
        if self._tokens < 1.0:
            return False
        self._tokens -= 1.0
        return True

    def _check(self, collection: str, space_id: str, vec: np.ndarray) -> None:
        """Re-run one sampled query on the live index and exactly; record its recall."""
        key = (collection, space_id)
        if not self._allowed():
            self._metrics.recall_samples.labels(collection, space_id, "dropped").inc()
            return
        try:
            live = self._indexes.get(collection, space_id)
        except NotFound:
            return
        started = time.monotonic()
        try:
            truth = self._truth(key, live, vec)
        finally:
            took = time.monotonic() - started
            self._resume_at = time.monotonic() + took * (1 / self.config.recall_time_share - 1)
        if truth is None:
            return
        k = self.config.recall_k
        query = np.ascontiguousarray(vec[None, :], dtype=np.float32)
        _, found = live.index.search(query, k)
        space = self._space(key)
        space.recall.add(query_recall(found[0], truth))
        space.samples.append((query[0], truth))
        self._metrics.recall_samples.labels(collection, space_id, "checked").inc()

    def _truth(self, key: Key, live: LiveIndex, vec: np.ndarray) -> np.ndarray | None:
        """Exact top-k ids of `vec`: over the index's own float vectors when it keeps them
        (flat, hnsw: no copy), else over a copy of the stored vectors; None over the cap."""
        k = self.config.recall_k
        query = np.ascontiguousarray(vec[None, :], dtype=np.float32)
        exact_search = getattr(live.index, "exact_search", None)
        if exact_search is not None and live.index.count() <= self.config.recall_max_vectors:
            got = exact_search(query, k)
            if got is not None:
                return np.asarray(got[1][0])
        exact = self._exact_copy(key, live.applied_seq, live.config.dim)
        if exact is None:
            return None
        return brute_force(exact.vectors, exact.ids, query, k, live.config.metric)[1][0]

    def _exact_copy(self, key: Key, seq: int, dim: int) -> _Exact | None:
        """The space's stored vectors, re-read when the index moved and the copy is older than
        EXACT_REFRESH_S; None for a space over recall_max_vectors."""
        have = self._exact.get(key)
        now = time.monotonic()
        if have is not None and (have.seq == seq or now - have.loaded < EXACT_REFRESH_S):
            return have
        ids: list[np.ndarray] = []
        vecs: list[np.ndarray] = []
        total = 0
        for batch_ids, batch_vecs in self._store.iter_vectors(*key, dim):
            total += len(batch_ids)
            if total > self.config.recall_max_vectors:
                log.info("online recall skips %s/%s: over %d vectors", *key, total - 1)
                return None
            ids.append(batch_ids)
            vecs.append(batch_vecs)
        if not ids:
            return None
        copy = _Exact(seq, now, np.concatenate(ids), np.ascontiguousarray(np.concatenate(vecs)))
        self._exact[key] = copy
        return copy

    def refresh(self) -> None:
        """Export every space's gauges; re-tune an index whose recall fell under its floor."""
        with self._guard:
            keys = list(self._spaces)
        for key in set(keys) | self.feedback.keys():
            if self._live(key):
                self._export(key)

    def _live(self, key: Key) -> bool:
        try:
            self._indexes.get(*key)
        except NotFound:
            return False
        return True

    def _export(self, key: Key) -> None:
        m, space = self._metrics, self._space(key)
        if self.config.drift:
            self._ensure_centroid(key, space)
            report = space.drift.evaluate()
            for signal, value in report.psi.items():
                m.drift_psi.labels(*key, signal).set(value)
                m.drift_ks.labels(*key, signal).set(report.ks[signal])
            m.drift_alert.labels(*key).set(1 if report.alert else 0)
        floor = self._floor(key)
        m.recall_floor.labels(*key).set(floor)
        estimate = space.recall.estimate()
        if estimate is not None:
            m.online_recall.labels(*key).set(estimate.recall)
            m.online_recall_low.labels(*key).set(estimate.low)
            m.online_recall_high.labels(*key).set(estimate.high)
            capped = bool(space.retunes) and not space.retunes[-1]["passed"]
            cooling = capped and time.monotonic() - space.last_retune_at < CAPPED_COOLDOWN_S
            if (
                self.config.retune
                and not cooling
                and estimate.queries >= self.config.recall_min_queries
                and estimate.recall < floor
            ):
                self.retune(key, floor, estimate.recall)
        if self.config.feedback:
            stats = self.feedback.stats(key)
            m.click_through.labels(*key).set(stats.click_through)
            if stats.clicked_mrr is not None:
                m.clicked_mrr.labels(*key).set(stats.clicked_mrr)

    def _ensure_centroid(self, key: Key, space: _Space) -> None:
        """Read the corpus centroid until the space holds vectors (then once per baseline)."""
        if space.drift.centroid is None:
            with contextlib.suppress(NotFound):
                space.drift.centroid = self._centroid(key)

    def _centroid(self, key: Key) -> np.ndarray | None:
        """The unit mean of (up to 20,000 of) the space's stored vectors."""
        live = self._indexes.get(*key)
        if live.index.count() == 0:
            return None
        first = next(iter(self._store.iter_vectors(*key, live.config.dim)), None)
        if first is None or len(first[0]) == 0:
            return None
        mean = first[1].astype(np.float64).mean(axis=0)
        norm = float(np.linalg.norm(mean))
        return mean / norm if norm > 0 else None

    def retune(self, key: Key, floor: float, before: float) -> dict[str, Any] | None:
        """Raise the index's knobs until the sampled live queries reach floor + MARGIN."""
        space = self._space(key)
        index = self._indexes.get(*key).index
        caps_of = getattr(index, "knob_caps", None)
        use = getattr(index, "use_knobs", None)
        if caps_of is None or use is None or not space.samples:
            return None
        samples = list(space.samples)
        queries = np.stack([s[0] for s in samples])
        truth = [s[1] for s in samples]
        k = self.config.recall_k
        search: Any = index.search

        def measure(knobs: dict[str, int]) -> float:
            _, found = search(queries, k, **knobs)
            return float(np.mean([query_recall(f, t) for f, t in zip(found, truth, strict=True)]))

        knobs = dict(index.knobs)
        result = raise_knobs(measure, knobs, caps_of(), floor, min(1.0, floor + MARGIN))
        if result.knobs != knobs:
            use(result.knobs)
        outcome = "raised" if result.passed else "capped"
        event = {"at": time.time(), "from": knobs, "to": dict(result.knobs),
                 "estimate_before": round(before, 4),
                 "sampled_recall_after": round(result.recall, 4), "queries": len(samples),
                 "passed": result.passed}  # fmt: skip
        space.retunes = [*space.retunes[-9:], event]
        space.last_retune_at = time.monotonic()
        space.recall.clear()  # a new estimate for the new knobs
        self._metrics.retunes.labels(*key, outcome).inc()
        log.warning(
            "online recall@%d of %s/%s was %.3f under its floor %.2f: knobs %s -> %s (%.3f on %d "
            "sampled live queries)", k, *key, before, floor, knobs, result.knobs, result.recall,
            len(samples),
        )  # fmt: skip
        return event
