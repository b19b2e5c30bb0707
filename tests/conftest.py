"""Shared fixtures: a real `embedstack serve` process on a free loopback port."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from embedstack.testing import ServerProcess

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"


def load_jsonl(path: Path) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class Server(ServerProcess):
    """`embedstack serve` for one test (see embedstack.testing)."""

    def __init__(self, data_dir: Path, env: dict[str, str], args: list[str] | None = None) -> None:
        super().__init__(data_dir, env, args or [])


def server_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EMBEDSTACK_")}
    env.update(
        HF_HUB_OFFLINE="1",
        EMBEDSTACK_ENABLE_TEST_MODELS="1",
        EMBEDSTACK_LOG_LEVEL="warning",
        # a loaded test machine must not shed the suite's queries (100 ms is the default SLO)
        EMBEDSTACK_QUERY_BUDGET_MS="10000",
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
