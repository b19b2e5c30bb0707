"""The catalog's connection to its coordination store, Redis: one server, or a replicated set
watched by Redis Sentinel.

- `redis://HOST:PORT/DB`: one server (development; it does not survive its own loss).
- `redis+sentinel://HOST:PORT,HOST:PORT,HOST:PORT/MASTER[/DB]`: the Sentinels of a primary and
  its replicas (`embedstack cluster up` starts 1 primary + 2 replicas + 3 Sentinels, see
  infra/local.py start_redis_ha). The client asks the Sentinels where the primary is.

With Sentinel, a write is acknowledged only once a replica has it: every write goes through one
pinned connection to the primary and is followed, on that connection, by `WAIT 1 ack_ms` (WAIT
counts the replicas that acknowledged the writes of *its* connection, hence the pinning). When
no replica confirms in time the write raises Unavailable (503), so a 2xx means two processes
hold the change, and Sentinel promotes the most advanced replica when the primary dies: an
acknowledged write survives the loss of any one process. The primaries also run with
`min-replicas-to-write 1`, so a primary cut off from every replica refuses writes.

Failover: a command that fails because the primary died (connection refused or reset), was
demoted (READONLY, which redis-py turns into a connection error) or has no replica in sync yet
(NOREPLICAS, a new primary whose replicas are resyncing) is retried against the primary the
Sentinels name, for up to `failover_s`, and a WAIT that no replica answered yet is repeated as
long; a reader or writer sees a pause, not an error. A
write whose WAIT was cut off is not retried (it may or may not be on a replica: Unavailable,
retry the request). Retrying a write that failed before its reply may apply it twice: the
catalog's writes are idempotent except HSETNX (a create), which then answers 409 as if someone
else had created the name first.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from embedstack.errors import ConfigError, Unavailable

T = TypeVar("T")

SOCKET_TIMEOUT_S = 5.0
ACK_MS = 2000  # how long a write waits for a replica to confirm it
FAILOVER_S = 30.0  # how long a command keeps retrying while the Sentinels elect a new primary
RETRY_PAUSE_S = 0.2
SENTINEL_SCHEME = "redis+sentinel://"
URL_FORMS = "redis://HOST:PORT/DB or redis+sentinel://HOST:PORT,HOST:PORT,HOST:PORT/MASTER/DB"

# commands that never write: served by the shared pool without a WAIT; anything else is a write
READS = frozenset((
    "get", "mget", "hget", "hmget", "hgetall", "hexists", "hlen", "hkeys", "hvals", "hscan",
    "hscan_iter", "exists", "ttl", "pttl", "type", "keys", "scan", "scan_iter", "smembers",
    "sismember", "scard", "zrange", "zrevrange", "zrangebyscore", "zscore", "zcard", "lrange",
    "llen", "lindex", "xrange", "xrevrange", "xlen", "xinfo_stream", "ping", "info", "dbsize",
))  # fmt: skip


class CatalogRedis:
    """A redis-py client's commands (`client.hget(...)`, ...), with replicated writes and
    failover retries when `replicas` > 0 (see the module doc)."""

    def __init__(
        self, reads: Any, writes: Any | None = None, replicas: int = 0, ack_ms: int = ACK_MS,
        failover_s: float = 0.0, where: str = "redis",
    ) -> None:  # fmt: skip
        """`reads`: a redis-py client for reads; `writes`: one on a single-connection pool to
        the same primary (default: `reads`, for `replicas` == 0)."""
        self._reads = reads
        self._writes = writes if writes is not None else reads
        self.replicas = replicas
        self._ack_ms = ack_ms
        self._failover_s = failover_s
        self.where = where
        self._lock = threading.RLock() if replicas else None

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        if name in READS:
            read = getattr(self._reads, name)
            return lambda *args, **kwargs: self._retry(lambda: read(*args, **kwargs))
        if not callable(getattr(self._writes, name)):
            return getattr(self._writes, name)

        def command(*args: Any, **kwargs: Any) -> Any:
            return self.write(lambda client: getattr(client, name)(*args, **kwargs))

        return command

    def write(self, body: Callable[[Any], T]) -> T:
        """Run `body(client)` (commands, or a pipeline on `client.pipeline()`) on the writing
        connection, then wait for a replica to confirm it (see _acked)."""
        with self._lock or contextlib.nullcontext():
            out = self._retry(lambda: body(self._writes))
            self._acked()
            return out

    @contextlib.contextmanager
    def pipeline(self, transaction: bool = True) -> Iterator[Any]:
        """A redis-py pipeline on the writing connection (WATCH/MULTI/EXEC unless not a
        `transaction`); a replica confirms what it wrote when the block ends without an
        exception. Not retried on failover: the caller's block may have decided on what it
        read."""
        with self._lock or contextlib.nullcontext():
            try:
                with self._writes.pipeline(transaction=transaction) as pipe:
                    yield pipe
            except _errors() as exc:
                raise self._down(exc) from exc
            self._acked()

    def _acked(self) -> None:
        """WAIT on the writing connection until a replica has its writes; while none has (a
        replica resyncing after a failover), WAIT again (same connection, same offset) until
        `failover_s` passed, then Unavailable."""
        if not self.replicas:
            return
        deadline = time.monotonic() + self._failover_s
        while True:
            try:
                got = int(self._writes.wait(self.replicas, self._ack_ms))
            except _errors() as exc:
                raise Unavailable(
                    f"the catalog primary ({self.where}) failed before a replica confirmed the "
                    f"write, which may or may not have been kept: retry ({exc})"
                ) from exc
            if got >= self.replicas:
                return
            if time.monotonic() >= deadline:
                raise Unavailable(
                    f"no catalog replica confirmed the write within {self._ack_ms} ms "
                    f"({got} of {self.replicas} needed; {self.where}): the catalog's replicas "
                    "are down or lagging; the write is not known to be durable: retry once "
                    "they are back"
                )

    def _retry(self, call: Callable[[], T]) -> T:
        """`call()`, again while the primary is unreachable, demoted, or has no replica in
        sync (NOREPLICAS: a new primary whose replicas are still resyncing), for up to
        `failover_s`; then Unavailable naming the cause."""
        import redis

        deadline = time.monotonic() + self._failover_s
        while True:
            try:
                return call()
            except _errors() as exc:
                if time.monotonic() >= deadline:
                    raise self._down(exc) from exc
            except redis.ResponseError as exc:
                if not str(exc).startswith("NOREPLICAS"):
                    raise
                if time.monotonic() >= deadline:
                    raise Unavailable(
                        f"the catalog primary ({self.where}) has no replica in sync and refuses "
                        "writes: restart a replica"
                    ) from exc
            time.sleep(RETRY_PAUSE_S)

    def _down(self, exc: Exception) -> Unavailable:
        waited = f" for {self._failover_s:.0f} s" if self._failover_s else ""
        return Unavailable(f"the catalog ({self.where}) did not answer{waited}: {exc}")

    def close(self) -> None:
        for client in {id(self._reads): self._reads, id(self._writes): self._writes}.values():
            with contextlib.suppress(Exception):
                client.close()


def _errors() -> tuple[type[Exception], ...]:
    import redis

    return (redis.ConnectionError, redis.TimeoutError)


def catalog_client(url: str, ack_ms: int = ACK_MS, failover_s: float = FAILOVER_S) -> CatalogRedis:
    """The catalog's client for `url` (one of URL_FORMS); ConfigError names the forms."""
    import redis

    if url.startswith("redis://"):
        return CatalogRedis(redis.Redis.from_url(url, socket_timeout=SOCKET_TIMEOUT_S), where=url)
    if not url.startswith(SENTINEL_SCHEME):
        raise ConfigError(f"catalog URL {url!r} is not a Redis URL: use {URL_FORMS}")
    hosts, master, db = parse_sentinel_url(url)
    from redis.sentinel import Sentinel

    sentinel = Sentinel(hosts, socket_timeout=1.0)
    kwargs: dict[str, Any] = {"socket_timeout": SOCKET_TIMEOUT_S, "db": db}
    reads = sentinel.master_for(master, **kwargs)
    writes = sentinel.master_for(master, max_connections=1, **kwargs)
    return CatalogRedis(reads, writes, 1, ack_ms, failover_s, where=f"Sentinel master {master}")


def parse_sentinel_url(url: str) -> tuple[list[tuple[str, int]], str, int]:
    """([(host, port) of each Sentinel], master name, db) of a redis+sentinel:// URL."""
    rest = url.removeprefix(SENTINEL_SCHEME).strip("/")
    parts = rest.split("/")
    bad = f"catalog URL {url!r} is not a Sentinel URL: use {URL_FORMS}"
    if len(parts) not in (2, 3) or not parts[0] or not parts[1]:
        raise ConfigError(bad)
    hosts = []
    for item in parts[0].split(","):
        host, _, port = item.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(f"{bad} ({item!r} is not HOST:PORT)")
        hosts.append((host, int(port)))
    if len(parts) == 3 and not parts[2].isdigit():
        raise ConfigError(f"{bad} ({parts[2]!r} is not a database number)")
    return hosts, parts[1], int(parts[2]) if len(parts) == 3 else 0
