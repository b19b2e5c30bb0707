"""`Queue` on Redis Streams: the stream is the durable log of jobs, a consumer group tracks which
of them are unfinished, and per-job state lives in one Redis hash per job.

Keys (all under the hash tag `{NAME}`, so a Redis Cluster keeps them on one slot):
`{NAME}:log` the stream (one entry per enqueue and per `retry_dead`: id, payload, priority),
consumer group `workers` on it; `{NAME}:job:ID` the job's hash (status, attempts, lease id,
lease expiry, error, result, priority, creation order, its current log entry);
`{NAME}:ready` (queued jobs by priority then creation), `{NAME}:delayed` (by retry time),
`{NAME}:leases` (by lease expiry), `{NAME}:done` and `{NAME}:dead` (by last update) sorted
sets; `{NAME}:counts` (jobs per status). Every operation is one Lua script, so it is atomic
against every other client, and Redis runs with `appendfsync always` in our setup (infra/local),
so an acknowledged write is on disk.

How each item of the contract is kept:

* Durable enqueue, idempotent on the job id: one script appends the entry to the log (XADD)
  and creates the job's hash only if there is none; an existing id is returned unchanged.
* Lease: `lease` first reads the log's new entries through the consumer group (XREADGROUP
  under the worker's name) and *materializes* them: a job whose hash is missing (an entry some
  other producer appended) gets one; a queued job enters `ready`; an entry of a job that is
  already finished, or that is not the job's current entry (a duplicate append), is XACKed and
  skipped by id. Every delivered entry of an unfinished job stays in the group's pending-entries
  list (PEL) until the job is done or dead (XACK then), so XPENDING shows every job in flight
  and, after a lease, which worker holds it (the entry is XCLAIMed to the leasing worker).
* Visibility timeout and redelivery after a crash: a lease's expiry is a score in `leases`, on
  the caller's clock, per lease. XAUTOCLAIM is not used for takeover because it expires entries
  by one min-idle-time per call, while the contract gives every lease (and every `extend`) its
  own timeout; `lease` instead takes the best of the `ready` head and the expired leases (same
  priority-then-creation order as SQLite) and XCLAIMs that entry. A killed worker's job is
  therefore leased again once its own timeout passes, as a new attempt with a new lease id.
* Stale leases: `extend`, `ack`, `fail` and `release` compare the lease id in the job's hash.
* Retries with backoff: `fail` puts the job in `delayed` (score = when it may run again);
  `lease` moves due jobs to `ready`. Dead letters: at max_attempts, or when a lease expires on
  the last attempt (poison: it kills its workers), the job is dead, XACKed and listed in `dead`.
* `get`, `counts`, `dead_letters`, `purge` read the hashes and sorted sets; `purge` also XDELs
  the purged jobs' log entries. `retry_dead` appends a new log entry for the job.

Priorities must lie within +-2**20 (the ready order is one float score: -priority * 2**32 +
creation number).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import redis

from embedstack.errors import Conflict, InvalidInput, NotFound, Unavailable
from embedstack.ingest.queue import JOB_STATUSES, Job, check_timeout, dumps_object, job_id_for

GROUP = "workers"
MAX_PRIORITY = 2**20
MATERIALIZE_BATCH = 1000

# Shared Lua: ARGV[1] is always the key prefix. `score` orders jobs like SqliteQueue does.
_LIB = """
local P = ARGV[1]
local function jk(id) return P .. ':job:' .. id end
local function score(id)
  local f = redis.call('HMGET', jk(id), 'priority', 'seq')
  return -tonumber(f[1]) * 4294967296 + tonumber(f[2])
end
local function count(status, n) redis.call('HINCRBY', P .. ':counts', status, n) end
local function job(id) return redis.call('HGETALL', jk(id)) end
"""

_ENQUEUE = (
    _LIB
    + """
local id, payload, priority, max_attempts, now = ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6]
if redis.call('EXISTS', jk(id)) == 1 then return 0 end
local entry = redis.call('XADD', P .. ':log', '*', 'id', id, 'payload', payload,
                         'priority', priority)
redis.call('HSET', jk(id), 'id', id, 'payload', payload, 'status', 'queued', 'priority', priority,
           'seq', redis.call('INCR', P .. ':seq'), 'attempts', 0, 'max_attempts', max_attempts,
           'created_at', now, 'updated_at', now, 'available_at', now, 'entry', entry)
count('queued', 1)
return 1
"""
)

_LEASE = (
    _LIB
    + """
local worker, now, expires, lease_id, max_attempts, batch =
  ARGV[2], tonumber(ARGV[3]), ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local log = P .. ':log'
-- 1. materialize the log's new entries (delivered to this worker: now in the PEL)
local got = redis.call('XREADGROUP', 'GROUP', 'workers', worker, 'COUNT', batch,
                       'STREAMS', log, '>')
if got then
  for _, e in ipairs(got[1][2]) do
    local eid, f = e[1], {}
    for i = 1, #e[2], 2 do f[e[2][i]] = e[2][i + 1] end
    local id = f['id']
    if id and redis.call('EXISTS', jk(id)) == 0 then
      redis.call('HSET', jk(id), 'id', id, 'payload', f['payload'], 'status', 'queued',
                 'priority', f['priority'] or '0', 'seq', redis.call('INCR', P .. ':seq'),
                 'attempts', 0, 'max_attempts', max_attempts, 'created_at', ARGV[3],
                 'updated_at', ARGV[3], 'available_at', ARGV[3], 'entry', eid)
      count('queued', 1)
    end
    local st = id and redis.call('HMGET', jk(id), 'status', 'entry', 'available_at')
    if st and st[1] == 'queued' and st[2] == eid then
      if tonumber(st[3]) > now then
        redis.call('ZADD', P .. ':delayed', st[3], id)
      else
        redis.call('ZADD', P .. ':ready', score(id), id)
      end
    elseif not st or st[2] ~= eid or st[1] == 'done' or st[1] == 'dead' then
      redis.call('XACK', log, 'workers', eid)  -- finished or duplicate: skipped by id
    end
  end
end
-- 2. retries whose delay has passed
for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':delayed', '-inf', now)) do
  redis.call('ZREM', P .. ':delayed', id)
  redis.call('ZADD', P .. ':ready', score(id), id)
end
-- 3. the best of the ready head and the expired leases
while true do
  local best, best_score, expired = nil, nil, false
  local head = redis.call('ZRANGE', P .. ':ready', 0, 0, 'WITHSCORES')
  if #head > 0 then best, best_score = head[1], tonumber(head[2]) end
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', P .. ':leases', '-inf', now)) do
    local s = score(id)
    if best_score == nil or s < best_score then best, best_score, expired = id, s, true end
  end
  if best == nil then return false end
  local f = redis.call('HMGET', jk(best), 'attempts', 'max_attempts', 'leased_by', 'entry')
  if expired and tonumber(f[1]) >= tonumber(f[2]) then
    redis.call('ZREM', P .. ':leases', best)
    redis.call('HSET', jk(best), 'status', 'dead', 'updated_at', ARGV[3], 'error',
      'visibility timeout expired on attempt ' .. f[1] .. ' of ' .. f[2] .. " (worker '" ..
      (f[3] or '?') .. "') without ack or fail")
    redis.call('HDEL', jk(best), 'lease_id')
    redis.call('ZADD', P .. ':dead', ARGV[3], best)
    redis.call('XACK', log, 'workers', f[4])
    count('leased', -1)
    count('dead', 1)
  else
    if not expired then
      redis.call('ZREM', P .. ':ready', best)
      count('queued', -1)
      count('leased', 1)
    end
    redis.call('HINCRBY', jk(best), 'attempts', 1)
    redis.call('HSET', jk(best), 'status', 'leased', 'lease_id', lease_id, 'leased_by', worker,
               'available_at', expires, 'updated_at', ARGV[3])
    redis.call('ZADD', P .. ':leases', expires, best)
    redis.call('XCLAIM', log, 'workers', worker, 0, f[4], 'JUSTID')
    return job(best)
  end
end
"""
)

# ARGV: prefix, id, lease id, ... ; returns 0 when the lease is not the job's current one.
_OURS = """
local id, lease_id = ARGV[2], ARGV[3]
local cur = redis.call('HMGET', jk(id), 'status', 'lease_id', 'entry', 'attempts', 'max_attempts')
if cur[1] ~= 'leased' or cur[2] ~= lease_id then return 0 end
"""

_EXTEND = (
    _LIB
    + _OURS
    + """
redis.call('HSET', jk(id), 'available_at', ARGV[4], 'updated_at', ARGV[5])
redis.call('ZADD', P .. ':leases', ARGV[4], id)
return 1
"""
)

_ACK = (
    _LIB
    + _OURS
    + """
redis.call('HSET', jk(id), 'status', 'done', 'result', ARGV[4], 'updated_at', ARGV[5])
redis.call('HDEL', jk(id), 'lease_id')
redis.call('ZREM', P .. ':leases', id)
redis.call('ZADD', P .. ':done', ARGV[5], id)
redis.call('XACK', P .. ':log', 'workers', cur[3])
count('leased', -1)
count('done', 1)
return 1
"""
)

_FAIL = (
    _LIB
    + _OURS
    + """
local now, available = ARGV[5], ARGV[6]
redis.call('ZREM', P .. ':leases', id)
redis.call('HDEL', jk(id), 'lease_id')
count('leased', -1)
if tonumber(cur[4]) < tonumber(cur[5]) then
  redis.call('HSET', jk(id), 'status', 'queued', 'error', ARGV[4], 'available_at', available,
             'updated_at', now)
  if tonumber(available) > tonumber(now) then
    redis.call('ZADD', P .. ':delayed', available, id)
  else
    redis.call('ZADD', P .. ':ready', score(id), id)
  end
  count('queued', 1)
  return 1
end
redis.call('HSET', jk(id), 'status', 'dead', 'error', ARGV[4], 'updated_at', now)
redis.call('ZADD', P .. ':dead', now, id)
redis.call('XACK', P .. ':log', 'workers', cur[3])
count('dead', 1)
return 2
"""
)

_RELEASE = (
    _LIB
    + _OURS
    + """
local attempts = math.max(0, tonumber(cur[4]) - 1)
redis.call('HSET', jk(id), 'status', 'queued', 'attempts', attempts, 'available_at', ARGV[4],
           'updated_at', ARGV[4])
redis.call('HDEL', jk(id), 'lease_id')
redis.call('ZREM', P .. ':leases', id)
redis.call('ZADD', P .. ':ready', score(id), id)
count('leased', -1)
count('queued', 1)
return 1
"""
)

_RETRY_DEAD = (
    _LIB
    + """
local id, now = ARGV[2], ARGV[3]
local cur = redis.call('HMGET', jk(id), 'status', 'payload', 'priority')
if not cur[1] then return 'missing' end
if cur[1] ~= 'dead' then return cur[1] end
local entry = redis.call('XADD', P .. ':log', '*', 'id', id, 'payload', cur[2],
                         'priority', cur[3])
redis.call('HSET', jk(id), 'status', 'queued', 'attempts', 0, 'available_at', now,
           'updated_at', now, 'entry', entry)
redis.call('HDEL', jk(id), 'error', 'lease_id', 'leased_by')
redis.call('ZREM', P .. ':dead', id)
count('dead', -1)
count('queued', 1)
return 'ok'
"""
)

_PURGE = (
    _LIB
    + """
local ids = redis.call('ZRANGEBYSCORE', P .. ':done', '-inf', '(' .. ARGV[2], 'LIMIT', 0, ARGV[3])
for _, id in ipairs(ids) do
  local entry = redis.call('HGET', jk(id), 'entry')
  if entry then redis.call('XDEL', P .. ':log', entry) end
  redis.call('DEL', jk(id))
  redis.call('ZREM', P .. ':done', id)
end
if #ids > 0 then count('done', -#ids) end
return #ids
"""
)


class RedisStreamsQueue:
    """`Queue` on a Redis server (see the module docstring for how each contract item is kept).

    `name` scopes every key, so several queues (or test runs) share one server; every process
    that opens the same `name` on the same server sees the same jobs."""

    def __init__(
        self,
        client: redis.Redis,
        name: str = "embedstack",
        max_attempts: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if max_attempts < 1:
            raise InvalidInput(f"max_attempts must be at least 1, got {max_attempts}")
        self.name = name
        self.max_attempts = max_attempts
        self._prefix = "{" + name + "}"
        self._redis = client
        self._clock = clock
        self._where = f"redis queue {name!r} at {self._address()}"
        self._scripts = {
            key: client.register_script(src)
            for key, src in (
                ("enqueue", _ENQUEUE), ("lease", _LEASE), ("extend", _EXTEND), ("ack", _ACK),
                ("fail", _FAIL), ("release", _RELEASE), ("retry_dead", _RETRY_DEAD),
                ("purge", _PURGE),
            )
        }  # fmt: skip
        with self._errors():
            try:
                client.xgroup_create(f"{self._prefix}:log", GROUP, id="0", mkstream=True)
            except redis.ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    @classmethod
    def connect(
        cls, url: str, name: str = "embedstack", max_attempts: int = 5, **kwargs: Any
    ) -> RedisStreamsQueue:
        """Open `name` on the server at `url` (redis://HOST:PORT[/DB])."""
        client = redis.Redis.from_url(
            url, decode_responses=True, socket_timeout=10.0, socket_connect_timeout=5.0
        )
        return cls(client, name, max_attempts, **kwargs)

    def _address(self) -> str:
        kw = self._redis.connection_pool.connection_kwargs
        return f"{kw.get('host', '?')}:{kw.get('port', '?')}"

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except redis.ConnectionError as exc:
            raise Unavailable(f"{self._where} is unreachable: {exc}; is redis-server up?") from exc
        except redis.TimeoutError as exc:
            raise Unavailable(f"{self._where} timed out: {exc}") from exc
        except redis.ResponseError as exc:
            raise Unavailable(f"{self._where} refused a command: {exc}") from exc

    def _run(self, script: str, *args: str | int | float) -> Any:
        with self._errors():
            return self._scripts[script](args=[self._prefix, *args])

    def _job(self, flat: list[str] | dict[str, str]) -> Job:
        f = flat if isinstance(flat, dict) else dict(zip(flat[::2], flat[1::2], strict=True))
        # (the client decodes responses: every key and value is a str)
        return Job(
            id=f["id"],
            payload=json.loads(f["payload"]),
            status=f["status"],
            attempts=int(f["attempts"]),
            max_attempts=int(f["max_attempts"]),
            lease_id=f.get("lease_id"),
            error=f.get("error"),
            result=json.loads(f["result"]) if "result" in f else None,
            created_at=float(f["created_at"]),
            updated_at=float(f["updated_at"]),
        )

    def _get(self, job_id: str) -> Job | None:
        with self._errors():
            f: dict[str, str] = self._redis.hgetall(f"{self._prefix}:job:{job_id}")  # type: ignore[assignment]
        return self._job(f) if f else None

    # -- Queue -------------------------------------------------------------------------------

    def enqueue(self, payload: dict[str, Any], job_id: str | None = None, priority: int = 0) -> str:
        """Add a job and return its id; an existing `job_id` is returned unchanged."""
        job_id = job_id_for(job_id, priority)
        if abs(priority) > MAX_PRIORITY:
            raise InvalidInput(f"priority must lie within +-{MAX_PRIORITY}, got {priority}")
        body = dumps_object(payload, "payload")
        self._run("enqueue", job_id, body, priority, self.max_attempts, repr(self._clock()))
        return job_id

    def lease(self, worker: str, visibility_timeout: float) -> Job | None:
        """Take the best available job for `visibility_timeout` seconds, or None."""
        check_timeout("visibility_timeout", visibility_timeout, allow_zero=False)
        now = self._clock()
        flat = self._run(
            "lease", worker, repr(now), repr(now + visibility_timeout), uuid.uuid4().hex,
            self.max_attempts, MATERIALIZE_BATCH,
        )  # fmt: skip
        if not flat:
            return None
        return self._job(flat)

    def extend(self, job_id: str, lease_id: str, visibility_timeout: float) -> bool:
        """Heartbeat: push the lease's expiry to now + timeout. False if the lease is not ours."""
        check_timeout("visibility_timeout", visibility_timeout, allow_zero=False)
        now = self._clock()
        return bool(
            self._run("extend", job_id, lease_id, repr(now + visibility_timeout), repr(now))
        )

    def ack(self, job_id: str, lease_id: str, result: dict[str, Any]) -> bool:
        """Mark the job done with `result`. False (and no change) if the lease is not ours."""
        body = dumps_object(result, "result")
        return bool(self._run("ack", job_id, lease_id, body, repr(self._clock())))

    def fail(self, job_id: str, lease_id: str, error: str, retry_delay: float = 0.0) -> str:
        """Record a failure; return the new status "queued" or "dead", or "stale"."""
        check_timeout("retry_delay", retry_delay, allow_zero=True)
        now = self._clock()
        code = self._run("fail", job_id, lease_id, str(error), repr(now), repr(now + retry_delay))
        return {0: "stale", 1: "queued", 2: "dead"}[int(code)]

    def release(self, job_id: str, lease_id: str) -> bool:
        """Give a leased job back unfinished: queued, available now, its attempt not counted."""
        return bool(self._run("release", job_id, lease_id, repr(self._clock())))

    def get(self, job_id: str) -> Job:
        """Return the job; raise NotFound if there is none with this id."""
        job = self._get(job_id)
        if job is None:
            raise NotFound(f"job {job_id!r} not found in {self._where}")
        return job

    def counts(self) -> dict[str, int]:
        """Number of jobs per status, with all four statuses present."""
        with self._errors():
            raw = self._redis.hgetall(f"{self._prefix}:counts")
        return {s: int(raw.get(s, 0)) for s in JOB_STATUSES}

    def dead_letters(self, limit: int = 100) -> list[Job]:
        """Dead jobs, most recently dead-lettered first."""
        if limit < 0:
            raise InvalidInput(f"limit must be >= 0, got {limit}")
        if limit == 0:
            return []
        with self._errors():
            ids: list[str] = self._redis.zrevrange(f"{self._prefix}:dead", 0, limit - 1)  # type: ignore[assignment]
        return [j for j in (self._get(i) for i in ids) if j is not None]

    def purge(self, older_than: float, limit: int = 10_000) -> int:
        """Delete up to `limit` done jobs last updated over `older_than` seconds ago (and their
        log entries); returns how many. Dead jobs stay for inspection and retry."""
        check_timeout("older_than", older_than, allow_zero=True)
        return int(self._run("purge", repr(self._clock() - older_than), limit))

    def retry_dead(self, job_id: str) -> None:
        """Move a dead job back to queued with its attempts reset: a new entry in the log."""
        outcome = self._run("retry_dead", job_id, repr(self._clock()))
        if outcome == "missing":
            raise NotFound(f"job {job_id!r} not found in {self._where}")
        if outcome != "ok":
            raise Conflict(f"job {job_id!r} is {outcome}, not dead; only dead jobs can retry")

    def close(self) -> None:
        """Close this queue's connections (the jobs stay on the server)."""
        self._redis.close()
        self._redis.connection_pool.disconnect()

    def __enter__(self) -> RedisStreamsQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
