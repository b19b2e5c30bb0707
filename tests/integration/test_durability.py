"""Restarts, crashes and killed workers lose nothing acknowledged and index it exactly once."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from embedstack.testing import EMBEDSTACK
from tests.conftest import Server, server_env, wait_job


def _doc(i: int, words: int = 60) -> dict[str, object]:
    rng = random.Random(i)
    text = " ".join(f"w{rng.randrange(5000)}" for _ in range(words))
    return {
        "id": f"doc-{i}",
        "text": f"document {i}. {text}",
        "metadata": {"n": i, "odd": i % 2 == 1},
    }


def _top(c: httpx.Client, collection: str, text: str, k: int = 3) -> list[str]:
    r = c.post(f"/v1/collections/{collection}/query", json={"text": text, "k": k})
    assert r.status_code == 200, r.text
    return [h["document_id"] for h in r.json()["hits"]]


def test_restart_keeps_everything(tmp_path: Path, make_server: Callable[..., Server]) -> None:
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    server = make_server(env)
    docs = [_doc(i) for i in range(300)]
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        job = c.post("/v1/collections/kb/documents", json={"documents": docs}).json()
        assert wait_job(c, job["job_id"])["status"] == "done"
        assert c.delete("/v1/collections/kb/documents/doc-5").status_code == 200
        before = {d["id"]: _top(c, "kb", str(d["text"])) for d in docs[:40]}
        described = c.get("/v1/collections/kb").json()
    assert described["vectors"] == described["chunks"] == 299
    server.stop()  # clean shutdown writes a snapshot

    server.start()
    with server.client() as c:
        after = {d["id"]: _top(c, "kb", str(d["text"])) for d in docs[:40]}
        assert after == before
        assert "doc-5" not in {x for hits in after.values() for x in hits}
        again = c.get("/v1/collections/kb").json()
        assert again["vectors"] == 299 and again["space_id"] == described["space_id"]
        # more writes after the snapshot, then a crash: the store's change log is replayed
        job = c.post("/v1/collections/kb/documents", json={"documents": [_doc(1000)]}).json()
        assert wait_job(c, job["job_id"])["status"] == "done"
        assert c.delete("/v1/collections/kb/documents/doc-6").status_code == 200
    server.stop(kill=True)

    server.start()
    with server.client() as c:
        assert _top(c, "kb", str(_doc(1000)["text"]), 1) == ["doc-1000"]
        assert "doc-6" not in _top(c, "kb", str(_doc(6)["text"]), 10)
        assert c.get("/v1/collections/kb").json()["vectors"] == 299
        # re-sending unchanged documents costs no model time and changes nothing
        job = c.post("/v1/collections/kb/documents", json={"documents": docs[10:60]}).json()
        assert job["unchanged"] == 50
        result = wait_job(c, job["job_id"])["result"]
        assert isinstance(result, dict) and result["chunks_embedded"] == 0
    server.stop()


def _start_worker(data: Path, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*EMBEDSTACK, "worker", "--data-dir", str(data)],
        env=env, stdout=log.open("ab"), stderr=subprocess.STDOUT,
    )  # fmt: skip


def test_killed_worker_loses_nothing_and_indexes_once(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    env = server_env(
        EMBEDSTACK_DEFAULT_MODEL="hashing-test",
        EMBEDSTACK_VISIBILITY_TIMEOUT_S="2",
        EMBEDSTACK_INGEST_BATCH_DOCUMENTS="4",
    )
    server = make_server(env, ["--workers", "0"])
    docs = [_doc(i, words=400) for i in range(1200)]
    jobs = []
    with server.client() as c:
        assert (
            c.post(
                "/v1/collections", json={"name": "kb", "chunking": {"size": 64, "overlap": 8}}
            ).status_code
            == 201
        )
        for start in range(0, len(docs), 40):
            r = c.post("/v1/collections/kb/documents", json={"documents": docs[start : start + 40]})
            assert r.status_code == 202
            jobs.append(r.json()["job_id"])
        log = tmp_path / "worker.log"
        worker = _start_worker(server.data_dir, env, log)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # kill it mid-ingest: some jobs done, most not
            states = [c.get(f"/v1/jobs/{j}").json()["status"] for j in jobs[:6]]
            if "done" in states:
                break
            time.sleep(0.02)
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=10)
        done_at_kill = sum(c.get(f"/v1/jobs/{j}").json()["status"] == "done" for j in jobs)
        assert 0 < done_at_kill < len(jobs), "the worker must be killed mid-ingest"

        worker = _start_worker(server.data_dir, env, log)
        try:
            finished = [wait_job(c, j, timeout=300) for j in jobs]
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=30)
        assert all(j["status"] == "done" for j in finished), finished
        described = c.get("/v1/collections/kb").json()
        assert described["documents"] == len(docs) and described["documents_pending"] == 0
        # exactly once: the index holds each stored chunk once, no more, no less
        assert described["vectors"] == described["chunks"] > len(docs)
        for d in docs[::97]:
            hits = c.post("/v1/collections/kb/query",
                          json={"text": str(d["text"])[:300], "k": 1, "group_by": "document"}).json()["hits"]  # fmt: skip
            assert hits[0]["document_id"] == d["id"]
    server.stop()
