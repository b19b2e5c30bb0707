"""`embedstack cluster up --nodes 3 --log redis` and `embedstack serve --cluster`: the same HTTP
API on a local cluster, started by the CLI as a user would (real processes, loopback), with its
replicated catalog (Sentinel URL) and a Redis Streams shard log that retention trims."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from embedstack.cluster.stream_log import StreamShardLog
from embedstack.testing import EMBEDSTACK, stop_process
from tests.conftest import DATA, Server, load_jsonl, server_env, wait_job

pytest.importorskip("ray")
pytestmark = pytest.mark.slow


def _serve_line(proc: subprocess.Popen[bytes], out: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in out.read_text(errors="replace").splitlines():
            if line.startswith("embedstack serve --cluster"):
                return line
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    raise AssertionError(f"cluster up printed no serve command: {out.read_text()[-2000:]}")


def trimmed(queue: str, described: dict[str, Any]) -> None:
    """Until the API node's router deleted every record of the collection's log (all its
    replicas applied them); AssertionError after 60 s."""
    assert queue.startswith("redis://"), queue
    log = StreamShardLog(queue)
    topic, shards = described["topic"], described["shards"]
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            low, end = log.low_water(topic, shards), log.end_offsets(topic, shards)
            if low == end:
                break
            time.sleep(0.5)
        assert low == end and sum(end.values()) > 0, (low, end)
    finally:
        log.close()


def test_cluster_up_and_serve(tmp_path: Path) -> None:
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    out = tmp_path / "up.log"
    up = subprocess.Popen(
        [*EMBEDSTACK, "cluster", "up", "--nodes", "3", "--log", "redis",
         "--data-dir", str(tmp_path / "c")],
        env=env, stdout=out.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        args = _serve_line(up, out, 300).split()[2:]  # --cluster ADDR --queue URL --catalog URL
        server = Server(tmp_path / "api", env, args).start(timeout=300)
        try:
            with server.client() as c:
                assert c.get("/healthz").json()["nodes"] == ["n0", "n1", "n2"]
                made = c.post("/v1/collections", json={"name": "docs", "index": {"type": "exact"}})
                assert made.status_code == 201, made.text
                assert made.json()["shards"] == 8 and made.json()["replicas"] == 2
                corpus = load_jsonl(DATA / "pydoc_sections.jsonl")[:100]
                body = {"documents": [{"id": r["id"], "text": r["text"]} for r in corpus]}
                resp = c.post("/v1/collections/docs/documents", json=body)
                assert resp.status_code == 202, resp.text
                assert wait_job(c, resp.json()["job_id"], timeout=120)["status"] == "done"
                hits = c.post("/v1/collections/docs/query", json={"text": "open a file", "k": 5})
                assert hits.status_code == 200, hits.text
                assert len(hits.json()["hits"]) == 5
                # an alias resolves in the shared catalog, for queries as for writes
                alias = {"alias": "latest", "collection": "docs"}
                assert c.post("/v1/aliases", json=alias).status_code == 200
                via = c.post("/v1/collections/latest/query", json={"text": "open a file", "k": 5})
                assert via.json()["hits"] == hits.json()["hits"]
                # every query mode of a single node (hybrid is the default for text)
                assert hits.json()["mode"] == "hybrid"
                for mode in ("dense", "lexical"):
                    body = {"text": "open a file", "k": 5, "mode": mode}
                    got = c.post("/v1/collections/docs/query", json=body)
                    assert got.status_code == 200 and got.json()["mode"] == mode, got.text
                    assert len(got.json()["hits"]) == 5
                # log retention: once every replica is past the records, they are deleted
                trimmed(args[args.index("--queue") + 1], c.get("/v1/collections/docs").json())
                # bad input is a 4xx naming the fix, as on a single node
                bad = c.post("/v1/collections/docs/query", json={"mode": "lexical"})
                assert bad.status_code == 422 and "send 'text'" in bad.json()["error"]["message"]
                missing = c.post("/v1/collections/nope/query", json={"text": "x"})
                assert missing.status_code == 404
                assert c.delete("/v1/collections/docs").json() == {"deleted": "docs"}
                gone = c.post("/v1/collections/docs/query", json={"text": "x"})
                assert gone.status_code == 404
                assert c.get("/v1/collections").json() == {"collections": []}
            # the cluster's API keys live in its catalog, managed by the same CLI
            catalog = args[args.index("--catalog") + 1]
            assert catalog.startswith("redis+sentinel://"), catalog  # the replicated catalog
            made = subprocess.run(
                [*EMBEDSTACK, "keys", "create", "--catalog", catalog, "--scope", "admin"],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert made.returncode == 0, made.stderr
            prefix = made.stdout.strip().split("_")[1]
            listed = subprocess.run(
                [*EMBEDSTACK, "keys", "list", "--catalog", catalog],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert prefix in listed.stdout, listed.stdout + listed.stderr
            # and its audit log: the API node's writes and the CLI's own key creation
            audit = subprocess.run(
                [*EMBEDSTACK, "keys", "audit", "--catalog", catalog, "--limit", "1000"],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            entries = [json.loads(line) for line in audit.stdout.splitlines()]
            assert entries[0]["action"] == "cli keys create", audit.stdout + audit.stderr
            assert entries[0]["detail"]["key"] == prefix
            deleted = [e for e in entries if e["action"] == "DELETE /v1/collections/{name}"]
            assert deleted and deleted[0]["collection"] == "docs" and deleted[0]["status"] == 200
        finally:
            server.stop()
    finally:
        stop_process(up, grace=60, signum=signal.SIGINT)  # as Ctrl-C
