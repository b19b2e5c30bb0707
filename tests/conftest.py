"""Shared fixtures: a real `embedstack serve` process on a free loopback port; one OpenMP thread
for in-process faiss; clustered test vectors."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from embedstack.config import Settings
from embedstack.infra.local import LocalProcess, RedisHA, start_kafka, start_redis, start_redis_ha
from embedstack.storage.store import Store
from embedstack.testing import ServerProcess
from embedstack.types import CollectionConfig, IndexSpec, ModelSpec
from embedstack.vectors import unit_rows

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


def undeclared_routes(openapi: dict[str, Any]) -> list[str]:
    """Routes of an OpenAPI document whose success answer declares no response model."""
    missing = []
    for path, methods in openapi["paths"].items():
        for method, op in methods.items():
            ok = [s for s in op["responses"] if s.startswith("2")]
            content = op["responses"][ok[0]].get("content", {}) if ok else {}
            schema = content.get("application/json", {}).get("schema", {})
            if "$ref" not in schema and "text/plain" not in content:
                missing.append(f"{method.upper()} {path}")
    return missing


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


@pytest.fixture(scope="module")
def single_omp_thread() -> Iterator[None]:
    """faiss's OpenMP threads spin while waiting: on a shared 2-core box that slows small builds
    tenfold. Index tests do not depend on threads inside faiss. Use it per module with
    `pytestmark = pytest.mark.usefixtures("single_omp_thread")`."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


def store_with_space(path: Path, collection: str, space_id: str, dim: int) -> Store:
    """A store at `path` holding one cosine collection with one model space of `dim`."""
    store = Store(path)
    spec = ModelSpec("m", "r1", "fp", dim, "cosine", 16)
    config = CollectionConfig(dim, "cosine", IndexSpec(), "m", spec)
    store.create_collection(collection, config, space_id)
    return store


def clustered(
    n: int,
    seed: int,
    *,
    dim: int = 32,
    centers: int = 40,
    spread: float = 0.8,
    center_seed: int | None = None,
    normalize: bool = True,
) -> np.ndarray:
    """(n, dim) float32 points around `centers` cluster centers plus `spread` x Gaussian noise,
    unit length when `normalize`. The centers come from `center_seed` (the same centers for
    every `seed`), or, when it is None, from the points' own generator, drawn first."""
    rng = np.random.default_rng(seed)
    c = (rng if center_seed is None else np.random.default_rng(center_seed)).standard_normal(
        (centers, dim)
    )
    x = c[rng.integers(0, centers, n)] + spread * rng.standard_normal((n, dim))
    return unit_rows(x.astype(np.float32)) if normalize else x.astype(np.float32)


def in_process_settings(tmp_path: Path, **extra: Any) -> Settings:
    """Settings of an app run in process with starlette's TestClient: the hashing test model,
    no keys (loopback development mode) and TestClient's Host header allowed."""
    return Settings(
        data_dir=tmp_path / "data",
        enable_test_models=True,
        default_model="hashing-test",
        insecure_no_auth=True,
        allowed_hosts=["testserver"],
        **extra,
    )


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    """A real Kafka-protocol broker (tansu, from the `brokers` extra) on loopback for the session."""
    with start_kafka(tmp_path_factory.mktemp("kafka")) as broker:
        yield broker


@pytest.fixture(scope="session")
def redis_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalProcess]:
    """A real redis-server (from the `brokers` extra) on loopback for the session, fsync per write."""
    with start_redis(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def redis_ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHA]:
    """A replicated Redis on loopback for the session (a primary, 2 replicas, 3 Sentinels: the
    cluster catalog `embedstack cluster up` starts); a test that kills a server restarts it."""
    with start_redis_ha(tmp_path_factory.mktemp("redis-ha")) as ha:
        yield ha
