"""`embedstack cluster up --regions eu:1,us:1` and the `embedstack serve` line it prints: a
federated API node over HTTP, started by the CLI as a user would (real processes, loopback)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest

from embedstack.testing import EMBEDSTACK, stop_process
from tests.conftest import Server, server_env, wait_job
from tests.integration.test_cluster_cli import _serve_line

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def test_cluster_up_regions_and_serve(tmp_path: Path) -> None:
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test", EMBEDSTACK_CLUSTER_SHARDS="2",
                     EMBEDSTACK_CLUSTER_REPLICAS="1")  # fmt: skip
    out = tmp_path / "up.log"
    up = subprocess.Popen(
        [*EMBEDSTACK, "cluster", "up", "--regions", "eu:1,us:1", "--data-dir", str(tmp_path / "c")],
        env=env, stdout=out.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        args = _serve_line(up, out, 300).split()[2:]
        assert "eu=kafka://" in args[args.index("--queue") + 1]
        server = Server(tmp_path / "api", {**env, "EMBEDSTACK_REGION": "eu"}, args)
        server.start(timeout=300)
        try:
            with server.client() as c:
                assert c.get("/readyz").json()["regions"] == {"eu": True, "us": True}
                residency = {"regions": ["eu", "us"], "crossing": ["text"]}
                made = c.post("/v1/collections", json={"name": "docs", "residency": residency})
                assert made.status_code == 201, made.text
                docs = [
                    {"id": f"{r}-{i}", "text": f"{r} note {i} about kettles",
                     "metadata": {"region": r}}
                    for r in ("eu", "us") for i in range(3)
                ]  # fmt: skip
                resp = c.post("/v1/collections/docs/documents", json={"documents": docs})
                assert resp.status_code == 202, resp.text
                assert wait_job(c, resp.json()["job_id"], timeout=120)["status"] == "done"
                # the node's region (eu) is the caller's: eu hits in full, us hits with text
                hits = c.post("/v1/collections/docs/query", json={"text": "kettles", "k": 6})
                assert hits.status_code == 200, hits.text
                body = hits.json()
                assert body["caller"] == "eu" and len(body["hits"]) == 6
                for h in body["hits"]:
                    assert h["text"].startswith(h["region"])
                    assert ("metadata" in h) == (h["region"] == "eu"), h
                other = c.post("/v1/collections/docs/query", json={"text": "x", "region": "us"})
                assert other.status_code == 422 and "region eu" in other.text
                assert 'from_region="us"' in c.get("/metrics").text
        finally:
            server.stop()
    finally:
        stop_process(up, grace=60, signum=signal.SIGINT)  # as Ctrl-C
