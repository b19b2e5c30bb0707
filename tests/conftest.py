"""Shared fixtures: a real `embedstack serve` process on a free loopback port."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
EMBEDSTACK = [sys.executable, "-m", "embedstack"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


@dataclass
class Server:
    data_dir: Path
    env: dict[str, str]
    args: list[str] = field(default_factory=list)
    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120.0) -> Server:
        self.port = free_port()
        self.log = self.data_dir.parent / f"server-{self.port}.log"
        cmd = [*EMBEDSTACK, "serve", "--port", str(self.port), "--data-dir", str(self.data_dir)]
        self.proc = subprocess.Popen(
            [*cmd, *self.args], env=self.env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server not ready in {timeout}s: {self.log.read_text()[-3000:]}")

    def stop(self, kill: bool = False) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60)


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTACK_")}
    env.update(
        HF_HUB_OFFLINE="1", EMBEDSTACK_ENABLE_TEST_MODELS="1", EMBEDSTACK_LOG_LEVEL="warning"
    )
    env.update(extra)
    return env


def wait_job(client: httpx.Client, job_id: str, timeout: float = 300.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job: dict[str, object] = client.get(f"/v1/jobs/{job_id}").json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise TimeoutError(f"job {job_id} not finished in {timeout}s")


@pytest.fixture()
def make_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start servers that are stopped at teardown even when the test fails."""
    started: list[Server] = []

    def make(
        env: dict[str, str], args: list[str] | None = None, data: Path | None = None
    ) -> Server:
        server = Server(data or tmp_path / "data", env, args or [])
        started.append(server)
        return server.start()

    yield make
    for server in started:
        server.stop(kill=True)


@pytest.fixture(scope="module")
def hashing_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real server whose default model is the fast hashing test embedder."""
    data = tmp_path_factory.mktemp("hashing") / "data"
    server = Server(data, server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")).start()
    yield server
    server.stop()
