"""`embedstack tune` on a real server's data dir, and `embedstack plan`."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator

import numpy as np
import pytest

from embedstack.testing import EMBEDSTACK, free_port
from tests.conftest import Server, server_env, wait_job

DIM = 32


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test", COLUMNS="200")
    return subprocess.run(
        [*EMBEDSTACK, *args], env=env, capture_output=True, text=True, timeout=120
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with a bring-your-own-vectors collection of 3000 clustered vectors."""
    data = tmp_path_factory.mktemp("ops") / "data"
    srv = Server(data, server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")).start()
    rng = np.random.default_rng(7)
    centers = rng.normal(size=(30, DIM))
    vecs = centers[rng.integers(0, 30, 3000)] + 0.4 * rng.normal(size=(3000, DIM))
    try:
        with srv.client() as c:
            made = c.post("/v1/collections", json={"name": "vecs", "dim": DIM, "metric": "cosine"})
            assert made.status_code == 201, made.text
            for start in range(0, len(vecs), 1000):
                docs = [{"id": f"v{i}", "vector": vecs[i].tolist()}
                        for i in range(start, start + 1000)]  # fmt: skip
                r = c.post("/v1/collections/vecs/documents", json={"documents": docs})
                assert r.status_code == 202, r.text
                assert wait_job(c, r.json()["job_id"])["status"] == "done"
        yield srv
    finally:
        srv.stop()


def test_help_lists_tune_and_plan() -> None:
    top = _run("--help")
    assert top.returncode == 0 and "tune" in top.stdout and "plan" in top.stdout


def test_tune_measures_explains_and_applies_the_choice(server: Server) -> None:
    out = _run("tune", "-c", "vecs", "--data-dir", str(server.data_dir), "--recall-floor", "0.9",
               "--k", "10", "--queries", "100", "--apply", "--url", server.url)  # fmt: skip
    assert out.returncode == 0, out.stderr
    for column in ("recall@10", "p99 ms", "QPS", "bytes/vec", "build s"):
        assert column in out.stdout
    for family in ("flat", "hnsw", "hnsw_sq8", "sq8", "ivf_flat"):
        assert f" {family} " in out.stdout
    assert "3,000 vectors" in out.stderr and ">>" in out.stdout
    chosen = re.search(r"Chose (\w+)", out.stdout)
    assert chosen and "least memory per vector" in out.stdout, out.stdout
    assert "Applied" in out.stdout
    with server.client() as c:
        index = c.get("/v1/collections/vecs").json()["index"]
    assert index["type"] == chosen.group(1)
    if "recall_floor" in index["params"]:
        assert index["params"]["recall_floor"] == 0.9  # the index's own gate keeps the floor


def test_tune_refuses_when_nothing_meets_the_targets(server: Server) -> None:
    out = _run("tune", "-c", "vecs", "--data-dir", str(server.data_dir), "--types", "sq8,flat",
               "--recall-floor", "0.9", "--p99-ms", "0.000001", "--queries", "50")  # fmt: skip
    assert out.returncode != 0
    assert "no configuration reached recall@10 >= 0.9 within p99" in out.stderr
    assert "measured recall@10 1.000" in out.stderr  # flat: exact, but too slow for the target


def test_tune_apply_to_a_closed_port_names_the_url(server: Server) -> None:
    port = free_port()
    out = _run("tune", "-c", "vecs", "--data-dir", str(server.data_dir), "--types", "flat",
               "--queries", "20", "--sample", "500", "--apply", "--url", f"http://127.0.0.1:{port}")  # fmt: skip
    assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
    assert f"Error: cannot reach http://127.0.0.1:{port}/v1/collections/vecs" in out.stderr


def test_plan_prints_tib_for_a_billion_vectors() -> None:
    out = _run("plan", "--vectors", "1e9", "--dim", "768", "--replicas", "2")
    assert out.returncode == 0, out.stderr
    assert "2.79 TiB raw" in out.stdout and "TiB" in out.stdout.split("raw", 1)[1]
    for family in ("hnsw", "ivf_pq", "sq8"):
        assert family in out.stdout
