"""What the API nodes of a cluster observe together, in the catalog's Redis: live feedback on
answered queries, the drift baseline of each space, and the audit log. Every API node writes
and reads the same keys, so any node answers for the queries any other node answered.

- Feedback (obs/feedback.py's model): each answered query is one record under its query_id
  (collection, space, ranked document ids, marks), written before the query's answer; a list per
  (collection incarnation, space) orders them and keeps the newest `max_queries` (the oldest
  record and its mark go in the same script); a hash per space holds the marks, so the rates
  read one list length and the marked queries. A mark is a WATCHed transaction on its record:
  committed before the 200, never lost to a concurrent mark or to the trim.
- Drift baseline (obs/drift.py): the first `baseline_size` queries of a space, cluster-wide, as
  their signals (top-1 score, query vector norm); a reset deletes it and bumps its generation,
  which every API node checks before it trusts its cached copy.
- Audit: one capped stream per tenant; entry ids come from one counter, so they grow across
  tenants and API nodes as a single node's do.

Keys are per collection *incarnation* (its log topic): a collection deleted and created again
under the same name starts with no feedback and no baseline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import orjson

from embedstack.errors import NotFound, Unavailable
from embedstack.obs.drift import DriftReport, compare
from embedstack.obs.feedback import FeedbackStats, QueryRow, Totals, check_mark, marked
from embedstack.storage.keys import AuditEntry

WATCH_RETRIES = 50
# feedback of a space no query reached for this long expires (a deleted collection's too)
FEEDBACK_TTL_S = 30 * 24 * 3600
SIGNAL_DTYPE = np.float32  # (top-1 score, norm) per baseline query

# KEYS: order list, marks hash. ARGV: record key prefix, query id, record, keep, ttl seconds.
_REMEMBER = """
redis.call('SET', ARGV[1] .. ARGV[2], ARGV[3], 'EX', ARGV[5])
local n = redis.call('RPUSH', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local over = n - tonumber(ARGV[4])
if over > 0 then
  local old = redis.call('LRANGE', KEYS[1], 0, over - 1)
  redis.call('LTRIM', KEYS[1], over, -1)
  for _, id in ipairs(old) do
    redis.call('DEL', ARGV[1] .. id)
    redis.call('HDEL', KEYS[2], id)
  end
end
return n
"""
# KEYS: baseline list. ARGV: packed signals, baseline size. Appends while not full; its length.
_BASELINE = """
local n = redis.call('LLEN', KEYS[1])
if n < tonumber(ARGV[2]) then
  n = redis.call('RPUSH', KEYS[1], ARGV[1])
end
return n
"""
# KEYS: tenant stream, id counter. ARGV: entry, max entries. The entry's id.
_AUDIT = """
local id = redis.call('INCR', KEYS[2])
redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], id .. '-1', 'e', ARGV[1])
return id
"""


class ClusterFeedback:
    """Remembered queries and their marks (the cluster's obs.feedback.FeedbackLog)."""

    def __init__(self, client: Any, prefix: str, max_queries: int, k: int) -> None:
        self._r = client
        self._records = f"{prefix}:feedback:q:"
        self._space = f"{prefix}:feedback:space:"
        self.max_queries = max_queries
        self._k = k
        self._remember = client.register_script(_REMEMBER)
        self._ttl = FEEDBACK_TTL_S

    def _keys(self, topic: str, space_id: str) -> tuple[str, str]:
        base = f"{self._space}{topic}|{space_id}"
        return base + ":order", base + ":marks"

    def remember(
        self, collection: str, topic: str, space_id: str, documents: list[str], pipe: Any = None
    ) -> str:
        """A new query_id for an answered query, its record written (in `pipe` when given:
        the caller executes it)."""
        query_id = uuid.uuid4().hex
        record: dict[str, Any] = {"collection": collection, "topic": topic, "space_id": space_id,
                  "documents": documents, "first_click": None, "grades": {}}  # fmt: skip
        self._remember(
            keys=list(self._keys(topic, space_id)),
            args=[self._records, query_id, orjson.dumps(record), self.max_queries, self._ttl],
            client=pipe if pipe is not None else self._r,
        )
        return query_id

    def owner(self, query_id: str) -> str | None:
        """The (stored) collection name a remembered query ran on; None when unknown."""
        raw = self._r.get(self._records + query_id)
        return None if raw is None else str(orjson.loads(raw)["collection"])

    def record(
        self, query_id: str, document_id: str, kind: str, grade: int | None = None
    ) -> tuple[tuple[str, str], int]:
        """Mark a click or grade on `document_id` among the hits of `query_id`, committed
        before this returns; the query's (collection, space) and the hit's rank."""
        import redis

        check_mark(kind, grade)
        key = self._records + query_id
        with self._r.pipeline() as pipe:
            for _ in range(WATCH_RETRIES):
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        raise NotFound(
                            f"query_id {query_id!r} is unknown or forgotten (the cluster "
                            f"remembers the last {self.max_queries} queries of each collection "
                            "space): send the query_id of a recent query response"
                        )
                    data = orjson.loads(raw)
                    row, rank = marked(_row(query_id, data), document_id, kind, grade)
                    data.update(first_click=row.first_click, grades=row.grades)
                    _, marks = self._keys(data["topic"], row.space_id)
                    mark = {"first_click": row.first_click, "graded": bool(row.grades)}
                    pipe.multi()
                    pipe.set(key, orjson.dumps(data), keepttl=True)
                    pipe.hset(marks, query_id, orjson.dumps(mark))
                    pipe.expire(marks, self._ttl)
                    pipe.execute()
                    return (row.collection, row.space_id), rank
                except redis.WatchError:
                    continue
        raise Unavailable(f"query {query_id!r} kept being marked concurrently: retry")

    def stats(self, topic: str, space_id: str) -> FeedbackStats:
        """Click-through@k and clicked MRR over the remembered queries of one space."""
        order, marks = self._keys(topic, space_id)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.llen(order)
            pipe.hvals(marks)
            queries, raw_marks = pipe.execute()
        totals = Totals()
        for raw in raw_marks:
            m = orjson.loads(raw)
            totals.add(QueryRow("", "", "", [], m["first_click"], {"": 1} if m["graded"] else {}),
                       1, self._k)  # fmt: skip
        totals.queries = int(queries)
        return totals.stats()


def _row(query_id: str, data: dict[str, Any]) -> QueryRow:
    return QueryRow(query_id, str(data["collection"]), str(data["space_id"]),
                    list(data["documents"]), data["first_click"],
                    {str(k): int(v) for k, v in data["grades"].items()})  # fmt: skip


class ClusterBaselines:
    """The drift baseline of each space, shared by the API nodes: the signals of its first
    `size` queries."""

    def __init__(self, client: Any, prefix: str, size: int) -> None:
        self._r = client
        self._base = f"{prefix}:drift:"
        self.size = size
        self._append = client.register_script(_BASELINE)

    def _key(self, topic: str, space_id: str) -> str:
        return f"{self._base}{topic}|{space_id}"

    def append(self, topic: str, space_id: str, top1: float, norm: float, pipe: Any) -> None:
        """Add one query's signals while the baseline is not full (in `pipe`: its result is
        the baseline's length)."""
        packed = np.asarray([top1, norm], SIGNAL_DTYPE).tobytes()
        self._append(keys=[self._key(topic, space_id)], args=[packed, self.size], client=pipe)

    def read(self, topic: str, space_id: str) -> tuple[int, np.ndarray]:
        """(generation, baseline signals: one row of (top-1 score, norm) per query)."""
        key = self._key(topic, space_id)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.get(key + ":generation")
            pipe.lrange(key, 0, self.size - 1)
            generation, rows = pipe.execute()
        signals = np.frombuffer(b"".join(rows), SIGNAL_DTYPE).reshape(-1, 2)
        return int(generation or 0), signals

    def generations(self, spaces: Iterable[tuple[str, str]]) -> list[int]:
        keys = [self._key(*s) + ":generation" for s in spaces]
        return [int(g or 0) for g in self._r.mget(keys)] if keys else []

    def reset(self, topic: str, space_id: str) -> None:
        """Start a new baseline from the next queries (every API node drops its window)."""
        key = self._key(topic, space_id)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.incr(key + ":generation")
            pipe.execute()


class ClusterAudit:
    """The audit log of a cluster: one capped stream per tenant, ids from one counter."""

    def __init__(self, client: Any, prefix: str, max_entries: int) -> None:
        self._r = client
        self._stream = f"{prefix}:audit:"
        self._ids = f"{prefix}:audit-ids"
        self.max_entries = max_entries
        self._add = client.register_script(_AUDIT)

    def add_audit(
        self, key_prefix: str | None, tenant: str, action: str, collection: str | None = None,
        status: int | None = None, detail: dict[str, Any] | None = None,
    ) -> int:  # fmt: skip
        entry = AuditEntry(0, time.time(), key_prefix, tenant, action, collection, status,
                           detail or {})  # fmt: skip
        body = orjson.dumps(asdict(entry))
        return int(self._add(keys=[self._stream + tenant, self._ids],
                             args=[body, self.max_entries]))  # fmt: skip

    def audit(
        self, tenant: str | None, limit: int = 100, before: int | None = None
    ) -> list[AuditEntry]:
        """A tenant's entries (None: every tenant's), newest first, older than id `before`
        when given."""
        if before is not None and before <= 1:
            return []
        top = "+" if before is None else f"{before - 1}-1"
        if tenant is not None:
            streams = [self._stream + tenant]
        else:
            streams = sorted(k.decode() for k in self._r.scan_iter(match=self._stream + "*"))
        out = []
        for stream in streams:
            for entry_id, fields in self._r.xrevrange(stream, top, "-", count=limit):
                data = orjson.loads(fields[b"e"])
                data["id"] = int(entry_id.decode().split("-")[0])
                out.append(AuditEntry(**data))
        return sorted(out, key=lambda e: -e.id)[:limit]


@dataclass
class _Window:
    """One space's drift on this API node: its own window, the shared baseline's state."""

    generation: int
    rows: deque[tuple[float, float]]
    full: bool = False  # the shared baseline has its `size` queries
    baseline: np.ndarray | None = None  # the full baseline, as last read


class SharedDrift:
    """Query drift observed on one API node (it sees every query it answers) against the
    baseline every API node shares (ClusterBaselines): the baseline fills with the cluster's
    first queries of a space, this node's window with its own queries after that. Signals:
    the top-1 score and the query vector's norm (the corpus centroid, which single node also
    compares against, lives in the shard replicas: not computed here)."""

    def __init__(
        self, baselines: ClusterBaselines, window_size: int, min_window: int, psi_alert: float
    ) -> None:
        self.baselines = baselines
        self.window_size = window_size
        self.min_window = min(min_window, window_size)
        self.psi_alert = psi_alert
        self._spaces: dict[tuple[str, str], _Window] = {}
        self._lock = threading.Lock()

    def _window(self, topic: str, space_id: str) -> _Window:
        """The space's state on this node; a new one notes the baseline's generation (one
        read, on the space's first query here)."""
        with self._lock:
            found = self._spaces.get((topic, space_id))
        if found is not None:
            return found
        generation = self.baselines.generations([(topic, space_id)])[0]
        with self._lock:
            return self._spaces.setdefault(
                (topic, space_id), _Window(generation, deque(maxlen=self.window_size))
            )

    def record(self, topic: str, space_id: str, top1: float, norm: float, pipe: Any) -> bool:
        """Note one answered query: into the window once the baseline is full (False), else
        appended to the shared baseline in `pipe` (True: pass the pipe's answer to `appended`)."""
        w = self._window(topic, space_id)
        if w.full:
            w.rows.append((top1, norm))
            return False
        self.baselines.append(topic, space_id, top1, norm, pipe)
        return True

    def appended(self, topic: str, space_id: str, length: int, top1: float, norm: float) -> None:
        """The baseline's length after `record`'s append (0: it was full, so the query belongs
        to the window)."""
        w = self._window(topic, space_id)
        if length == 0 or length >= self.baselines.size:
            w.full = True
        if length == 0:
            w.rows.append((top1, norm))

    def reset(self, topic: str, space_id: str) -> None:
        """A new baseline for the space, for every API node."""
        self.baselines.reset(topic, space_id)
        self._forget(topic, space_id)

    def _forget(self, topic: str, space_id: str) -> None:
        with self._lock:
            self._spaces.pop((topic, space_id), None)

    def check_generations(self) -> None:
        """Drop the window of every space whose baseline another API node reset."""
        with self._lock:
            spaces = [(k, w.generation) for k, w in self._spaces.items()]
        now = self.baselines.generations([k for k, _ in spaces])
        for (key, seen), current in zip(spaces, now, strict=True):
            if current != seen:
                self._forget(*key)

    def spaces(self) -> list[tuple[str, str]]:
        with self._lock:
            return list(self._spaces)

    def evaluate(self, topic: str, space_id: str) -> DriftReport:
        """obs.drift's report of this node's window against the shared baseline."""
        w = self._window(topic, space_id)
        generation, base = self.baselines.read(topic, space_id)
        if generation != w.generation:
            self._forget(topic, space_id)  # reset by another API node: start over
            w = self._window(topic, space_id)
        if len(base) < self.baselines.size:
            return DriftReport("collecting baseline", len(base), len(w.rows))
        w.full, w.baseline = True, base
        window = np.asarray(list(w.rows), np.float64).reshape(-1, 2)
        if len(window) < self.min_window:
            return DriftReport("collecting window", len(w.baseline), len(window))
        return compare(_signals(w.baseline), _signals(window), self.psi_alert)


def _signals(rows: np.ndarray) -> dict[str, np.ndarray]:
    rows = rows.astype(np.float64)
    return {"top1_score": rows[:, 0], "norm": rows[:, 1]}
