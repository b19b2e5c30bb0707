"""Real processes on loopback for the test suite and the benchmarks: one way to start, wait for
and stop a server, so tests and benchmarks measure the same thing. Nothing here is used by the
server itself; it imports no other embedstack module.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from embedstack.infra.local import free_port

EMBEDSTACK = [sys.executable, "-m", "embedstack"]
__all__ = ["EMBEDSTACK", "free_port"]


def stop_process(
    proc: subprocess.Popen[Any], grace: float = 30.0, kill: bool = False,
    signum: int = signal.SIGTERM,
) -> None:  # fmt: skip
    """`signum` (or SIGKILL with `kill`), wait up to `grace` seconds, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL if kill else signum)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def wait_until(
    proc: subprocess.Popen[bytes],
    ready: Callable[[], bool],
    timeout: float,
    log: Path,
    what: str,
    interval: float = 0.1,
) -> None:
    """Poll `ready()` until it holds; RuntimeError with the log's tail if the process exits or
    `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {log.read_text(errors='replace')[-3000:]}")
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        time.sleep(interval)
    raise RuntimeError(f"{what} not ready in {timeout:.0f} s: {log.read_text()[-3000:]}")


class ServerProcess:
    """`embedstack serve` on a free loopback port with its own data dir, ready once /readyz
    answers 200; usable as a context manager. `command` replaces `python -m embedstack` (e.g.
    with a profiling wrapper); `args` are extra `serve` flags. Without `auth` the server runs
    with --insecure-no-auth (loopback only); with it, requests need a key: `api_key` is sent by
    `client()`. `tls` serves HTTPS from (certificate, key) files."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str],
        args: Sequence[str] = (),
        command: Sequence[str] = EMBEDSTACK,
        log_dir: Path | None = None,
        auth: bool = False,
        api_key: str | None = None,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.auth = auth
        self.api_key = api_key
        self.tls = tls
        self.data_dir = data_dir
        self.env = env
        self.args = list(args)
        self.command = list(command)
        self.log_dir = log_dir or data_dir.parent
        self.port = 0
        self.log = self.log_dir / "server.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> ServerProcess:
        self.port = free_port()
        self.log = self.log_dir / f"server-{self.port}.log"
        cmd = [*self.command, "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        cmd += ["--data-dir", str(self.data_dir), *self.args]
        if not self.auth:
            cmd.append("--insecure-no-auth")
        if self.tls:
            cmd += ["--tls-cert", str(self.tls[0]), "--tls-key", str(self.tls[1])]
        self.proc = subprocess.Popen(
            cmd, env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        try:
            wait_until(self.proc, self._ready, timeout, self.log, "server")
        except RuntimeError:
            self.stop(kill=True)
            raise
        return self

    def _ready(self) -> bool:
        return httpx.get(f"{self.url}/readyz", timeout=2, verify=self._verify()).status_code == 200

    def _verify(self) -> ssl.SSLContext | bool:
        """Trust the server's own certificate (a test's self-signed one)."""
        return ssl.create_default_context(cafile=str(self.tls[0])) if self.tls else True

    def stop(self, kill: bool = False, grace: float = 30.0) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace, kill)
            self.proc = None

    def signal(self, signum: int) -> None:
        assert self.proc is not None, "the server is not running"
        self.proc.send_signal(signum)

    def client(self, timeout: float = 60.0, api_key: str | None = None) -> httpx.Client:
        key = api_key or self.api_key
        headers = {"Authorization": f"Bearer {key}"} if key else None
        return httpx.Client(
            base_url=self.url, timeout=timeout, headers=headers, verify=self._verify()
        )

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- binaries a test needs (a fresh CI machine has only Python + pip + apt) ---------------------
APT_TIMEOUT_S = 900.0


def ensure_binary(names: Sequence[str], package: str) -> str:
    """The path of the first of `names` on PATH; when none is there, install Debian `package` with
    apt-get (after `apt-get update`; through `sudo -n` when not root) and look again.
    RuntimeError naming the fix when it cannot be had."""
    import os
    import shutil

    def found() -> str | None:
        return next((p for p in map(shutil.which, names) if p), None)

    path = found()
    if path is not None:
        return path
    fix = f"{names[0]} is not installed: run `apt-get install -y {package}`"
    if shutil.which("apt-get") is None:
        raise RuntimeError(fix)
    sudo: list[str] = []
    if os.geteuid() != 0:
        found_sudo = shutil.which("sudo")
        if found_sudo is None:
            raise RuntimeError(fix)
        sudo = [found_sudo, "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", package]):
        done = subprocess.run([*sudo, *cmd], env=env, capture_output=True, timeout=APT_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.decode()[-2000:]}")
    path = found()
    if path is None:
        raise RuntimeError(f"apt-get installed {package} but none of {list(names)} is on PATH")
    return path


def ensure_prometheus() -> None:
    """prometheus and promtool on PATH (Debian's `prometheus` package)."""
    ensure_binary(("prometheus",), "prometheus")
    ensure_binary(("promtool",), "prometheus")


class PrometheusProcess:
    """A real Prometheus on a free loopback port scraping `targets` (host:port) every second,
    with `rule_files` loaded; its data in `data_dir`."""

    def __init__(self, data_dir: Path, targets: Sequence[str], rule_files: Sequence[Path] = ()):
        self.data_dir = data_dir
        self.targets = list(targets)
        self.rule_files = list(rule_files)
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> PrometheusProcess:
        import json

        self.data_dir.mkdir(parents=True, exist_ok=True)
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {"job_name": "embedstack", "static_configs": [{"targets": self.targets}]}
            ],
        }
        path = self.data_dir / "prometheus.yml"
        path.write_text(json.dumps(config))  # JSON is YAML
        self.port = free_port()
        log = self.data_dir / "prometheus.log"
        tsdb = self.data_dir / "tsdb"
        cmd = ["prometheus", f"--config.file={path}", f"--storage.tsdb.path={tsdb}",
               f"--web.listen-address=127.0.0.1:{self.port}"]  # fmt: skip
        self.proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        try:
            wait_until(self.proc, self._ready, timeout, log, "prometheus")
        except RuntimeError:
            self.stop()
            raise
        return self

    def _ready(self) -> bool:
        return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200

    def query(self, expr: str) -> list[dict[str, object]]:
        """The instant-query result vector of `expr`."""
        r = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        r.raise_for_status()
        result: list[dict[str, object]] = r.json()["data"]["result"]
        return result

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, grace=10.0)
            self.proc = None


CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def screenshot(url: str, out: Path, size: tuple[int, int] = (1400, 1100),
               wait_ms: int = 4000, timeout: float = 120.0) -> Path:  # fmt: skip
    """A PNG of `url` rendered by headless Chromium (installed from apt when missing), after
    `wait_ms` of virtual time for the page's scripts."""
    browser = ensure_binary(CHROMIUM, "chromium")
    profile = out.parent / f"{out.stem}-profile"
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
           f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, timeout=timeout)
    if not out.is_file():
        raise RuntimeError(f"chromium wrote no screenshot (rc {done.returncode}): "
                           f"{done.stderr.decode()[-2000:]}")  # fmt: skip
    return out
