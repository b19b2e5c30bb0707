"""Query modes on a real server (hashing test model): dense, lexical (FTS5) and hybrid, with
filters, grouping and each document scoring; bad inputs never 500; the lexical index stays
consistent through deletes, a restart and a model upgrade (cutover, retire)."""

from __future__ import annotations

import json
import random
import sqlite3
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from embedstack.storage.backup import backup, restore
from embedstack.storage.store import Store
from embedstack.testing import EMBEDSTACK
from tests.conftest import Server, server_env, wait_job

MODES = ("dense", "lexical", "hybrid")
SCORINGS = ("max", "max_sum", "first_prior")


def _docs() -> list[dict[str, object]]:
    rng = random.Random(7)
    docs: list[dict[str, object]] = []
    for i in range(40):
        words = " ".join(f"w{rng.randrange(500)}" for _ in range(60))
        # a unique marker word per document, and several chunks per document
        text = f"Section {i} about zebra{i} quagga{i % 4}. " + ". ".join([words] * 4)
        docs.append({"id": f"d{i}", "text": text, "metadata": {"part": i % 4, "n": i}})
    return docs


def _query(c: httpx.Client, name: str, **body: object) -> httpx.Response:
    return c.post(f"/v1/collections/{name}/query", json=body)


def _ids(r: httpx.Response) -> list[str]:
    assert r.status_code == 200, r.text
    return [h["document_id"] for h in r.json()["hits"]]


def _upgrade(c: httpx.Client, name: str) -> None:
    """Start an upgrade to the second hashing model and wait for its back-fill."""
    r = c.post(f"/v1/collections/{name}/upgrade", json={"model": "hashing-test-b"})
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 120
    while c.get(f"/v1/collections/{name}/upgrade").json()["state"] != "ready":
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _make(c: httpx.Client, name: str = "kb") -> list[dict[str, object]]:
    body = {"name": name, "chunking": {"mode": "tokens", "size": 64, "overlap": 8}}
    r = c.post("/v1/collections", json=body)
    assert r.status_code == 201, r.text
    docs = _docs()
    job = c.post(f"/v1/collections/{name}/documents", json={"documents": docs}).json()
    assert wait_job(c, job["job_id"])["status"] == "done"
    return docs


@pytest.fixture()
def server(make_server: Callable[..., Server]) -> Server:
    return make_server(server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test"))


def test_every_mode_finds_a_unique_word_with_filters_and_grouping(server: Server) -> None:
    c = server.client()
    _make(c)
    described = c.get("/v1/collections/kb").json()
    assert described["search"]["mode"] == "hybrid" and described["chunks"] > 40
    for mode in ("lexical", "hybrid"):
        r = _query(c, "kb", text="zebra17", k=5, mode=mode)
        assert _ids(r)[0] == "d17" and r.json()["mode"] == mode
    assert _query(c, "kb", text="zebra17", k=5).json()["mode"] == "hybrid"  # the default
    for mode in MODES:
        for scoring in SCORINGS:
            body = {"text": "quagga1 zebra5", "k": 8, "mode": mode, "doc_scoring": scoring}
            ids = _ids(_query(c, "kb", group_by="document", **body))
            assert len(ids) == len(set(ids)) == 8  # one hit per document
            ids = _ids(_query(c, "kb", filter={"part": 1}, **body))
            assert ids and all(int(i[1:]) % 4 == 1 for i in ids)
            ids = _ids(_query(c, "kb", filter={"part": 1}, group_by="document", **body))
            assert ids and all(int(i[1:]) % 4 == 1 for i in ids)
    for fusion in ("rrf", "blend"):
        for alpha in (0.0, 0.3, 1.0):
            body = {"text": "zebra33", "mode": "hybrid", "fusion": fusion, "alpha": alpha}
            ids = _ids(_query(c, "kb", k=3, **body))
            assert ids and (alpha == 1.0 or ids[0] == "d33")
    # lexical only: a filter matching nothing, and words matching nothing
    assert _ids(_query(c, "kb", text="zebra17", mode="lexical", filter={"part": 9})) == []
    assert _ids(_query(c, "kb", text="nosuchword", mode="lexical")) == []


@pytest.mark.parametrize(
    "text",
    ['"', '"zebra3', "zebra*", "NEAR(zebra3 quagga1)", "-zebra3", "text:zebra3", "a AND OR NOT",
     "^zebra3", "(zebra3", "zebra3)", "***", "'; DROP TABLE chunks; --", "zébra3 ✓ 中文", "{}[]"],
)  # fmt: skip
def test_fts_syntax_in_user_text_never_500s(hashing_server: Server, text: str) -> None:
    c = hashing_server.client()
    if c.get("/v1/collections/syntax").status_code == 404:
        _make(c, "syntax")
    for mode in ("lexical", "hybrid"):
        r = _query(c, "syntax", text=text, k=5, mode=mode)
        assert r.status_code == 200, r.text
        if "zebra3" in text and mode == "lexical":
            assert _ids(r)[0] == "d3"


def test_bad_mode_inputs_get_4xx(server: Server) -> None:
    c = server.client()
    _make(c)
    bad = [
        ({"text": "x", "mode": "sparse"}, 422),
        ({"text": "x", "mode": "hybrid", "alpha": 1.5}, 422),
        ({"text": "x", "mode": "hybrid", "alpha": -0.1}, 422),
        ({"text": "x", "mode": "hybrid", "fusion": "max"}, 422),
        ({"text": "x", "doc_scoring": "sum"}, 422),
        ({"vector": [0.0] * 384, "mode": "lexical"}, 422),
        ({"mode": "hybrid"}, 422),
        ({"text": "   ", "mode": "lexical"}, 422),
    ]
    for body, status in bad:
        r = _query(c, "kb", **body)
        assert r.status_code == status, (body, r.text)
        assert "error" in r.json()
    r = c.patch("/v1/collections/kb", json={"search": {"mode": "nope"}})
    assert r.status_code == 422
    r = c.patch("/v1/collections/kb", json={})
    assert r.status_code == 422


def test_collection_query_defaults(server: Server) -> None:
    c = server.client()
    _make(c)
    r = c.patch("/v1/collections/kb", json={"search": {"mode": "lexical", "alpha": 0.2}})
    assert r.status_code == 202 and r.json()["rebuilding"] is False, r.text
    assert r.json()["search"] == {
        "mode": "lexical", "fusion": "blend", "alpha": 0.2, "doc_scoring": "first_prior"
    }  # fmt: skip
    assert _query(c, "kb", text="zebra2").json()["mode"] == "lexical"
    assert _query(c, "kb", text="zebra2", mode="dense").json()["mode"] == "dense"
    r = c.patch("/v1/collections/kb", json={"search": {"mode": None}})
    assert r.json()["search"]["mode"] == "hybrid" and r.json()["search"]["alpha"] == 0.2
    body = {"name": "kb2", "search": {"mode": "dense", "doc_scoring": "max_sum"}}
    r = c.post("/v1/collections", json=body)
    assert r.status_code == 201 and r.json()["search"]["doc_scoring"] == "max_sum"
    # bring-your-own vectors: dense by default, hybrid with its own vector + text
    r = c.post("/v1/collections", json={"name": "byo", "dim": 4, "metric": "l2"})
    assert r.status_code == 201 and r.json()["search"]["mode"] == "dense"
    docs = [
        {"id": f"v{i}", "text": f"vector doc marker{i}", "vector": [float(i), 1.0, 0.0, 0.0]}
        for i in range(5)
    ]
    job = c.post("/v1/collections/byo/documents", json={"documents": docs}).json()
    assert wait_job(c, job["job_id"])["status"] == "done"
    r = _query(c, "byo", vector=[2.0, 1.0, 0.0, 0.0], k=2)
    assert r.json()["mode"] == "dense" and _ids(r)[0] == "v2" and r.json()["hits"][0]["score"] == 0
    r = _query(c, "byo", vector=[0.0, 1.0, 0.0, 0.0], text="marker4", mode="hybrid", k=5)
    assert set(_ids(r)[:2]) == {"v0", "v4"}
    assert _ids(_query(c, "byo", text="marker3", mode="lexical")) == ["v3"]
    r = _query(c, "byo", vector=[2.0, 1.0, 0.0, 0.0], k=2, mode="dense",
               doc_scoring="max_sum", group_by="document")  # fmt: skip
    assert _ids(r)[0] == "v2" and r.json()["hits"][0]["score"] == pytest.approx(0.0, abs=1e-6)


def test_lexical_follows_deletes_and_updates_and_survives_a_restart(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    server = make_server(env)
    c = server.client()
    _make(c)
    assert _ids(_query(c, "kb", text="zebra5", mode="lexical"))[0] == "d5"
    assert c.delete("/v1/collections/kb/documents/d5").status_code == 200
    assert "d5" not in _ids(_query(c, "kb", text="zebra5", mode="lexical", k=40))
    doc = {"id": "d6", "text": "now about okapi6 only", "metadata": {"part": 2}}
    job = c.post("/v1/collections/kb/documents", json={"documents": [doc]}).json()
    assert wait_job(c, job["job_id"])["status"] == "done"
    assert _ids(_query(c, "kb", text="okapi6", mode="lexical")) == ["d6"]
    assert "d6" not in _ids(_query(c, "kb", text="zebra6", mode="lexical", k=40))
    before = {q: _ids(_query(c, "kb", text=q, mode="hybrid")) for q in ("zebra9", "quagga2")}
    server.stop()
    store = Store(tmp_path / "data" / "store.db")
    store.lexical_check()  # FTS5 integrity-check against the chunks table
    store.close()
    again = make_server(env)
    c = again.client()
    after = {q: _ids(_query(c, "kb", text=q, mode="hybrid")) for q in before}
    assert after == before
    assert _ids(_query(c, "kb", text="okapi6", mode="lexical")) == ["d6"]
    c.delete("/v1/collections/kb")
    assert _query(c, "kb", text="okapi6", mode="lexical").status_code == 404
    again.stop()
    store = Store(tmp_path / "data" / "store.db")
    store.lexical_check()
    conn = sqlite3.connect(tmp_path / "data" / "store.db")
    assert (
        conn.execute("SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH 'okapi6'").fetchone()[
            0
        ]
        == 0
    )
    store.close()


def test_lexical_serves_across_a_model_cutover_and_retire(server: Server) -> None:
    c = server.client()
    _make(c)
    old = c.get("/v1/collections/kb").json()["space_id"]
    _upgrade(c, "kb")
    assert _ids(_query(c, "kb", text="zebra12", mode="lexical"))[0] == "d12"
    r = c.post("/v1/collections/kb/upgrade/cutover", json={"force": True})
    assert r.status_code == 200, r.text
    time.sleep(0.5)
    new = c.get("/v1/collections/kb").json()["space_id"]
    assert new != old
    for mode in ("lexical", "hybrid"):
        r = _query(c, "kb", text="zebra12", mode=mode)
        assert _ids(r)[0] == "d12" and r.json()["space_id"] == new
    r = c.post("/v1/collections/kb/retire", json={})
    assert r.status_code == 200, r.text
    ids = _ids(_query(c, "kb", text="zebra12", mode="lexical", k=40))
    assert ids[0] == "d12" and len(ids) == len(set(ids))


def test_eval_command_prints_every_mode_and_scoring(hashing_server: Server, tmp_path: Path) -> None:
    c = hashing_server.client()
    if c.get("/v1/collections/evalc").status_code == 404:
        _make(c, "evalc")
    labels = tmp_path / "labels.jsonl"
    rows = [{"query": f"zebra{i}", "relevant": [f"d{i}"]} for i in range(0, 40, 5)]
    labels.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cmd = [*EMBEDSTACK, "eval", "-c", "evalc", "--labels", str(labels), "--url", hashing_server.url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "recall@10" in lines[1] and len(lines) == 3 + 12
    lexical = next(line for line in lines if line.startswith("lexical / max "))
    assert float(lexical.split()[3]) == 1.0  # recall@10 of exact marker words
    out = subprocess.run([*cmd, "--json", "--modes", "lexical"], capture_output=True, text=True)
    assert out.returncode == 0 and len(out.stdout.splitlines()) == 3
    assert json.loads(out.stdout.splitlines()[0])["mrr"] == 1.0
    labels.write_text("nope\n")
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "labels.jsonl:1" in out.stderr


def test_the_largest_k_in_every_mode(hashing_server: Server) -> None:
    c = hashing_server.client()
    if c.get("/v1/collections/evalc").status_code == 404:
        _make(c, "evalc")
    chunks = c.get("/v1/collections/evalc").json()["chunks"]
    for mode in MODES:
        for group in (None, "document"):
            body = {"text": "quagga2 w7", "k": 1000, "mode": mode, "group_by": group}
            r = _query(c, "evalc", **body)
            ids = _ids(r)
            assert ids and (not group or len(ids) == len(set(ids)))
            if mode != "lexical":  # every chunk (or document) comes back
                assert len(ids) == (40 if group else chunks)


def _fts_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0])
    finally:
        conn.close()


def test_lexical_off_collection_is_dense_only_through_restart_backup_and_upgrade(
    make_server: Callable[..., Server], tmp_path: Path
) -> None:
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    server = make_server(env)
    c = server.client()
    for body, status in [
        ({"name": "x", "lexical": "no"}, 422),
        ({"name": "x", "lexical": False, "search": {"mode": "hybrid"}}, 422),
        ({"name": "x", "lexical": False, "lexical_fields": ["title"]}, 422),
        ({"name": "x", "lexical_fields": "title"}, 422),
    ]:
        r = c.post("/v1/collections", json=body)
        assert r.status_code == status and "lexical" in r.text, (body, r.text)
    body = {"name": "fast", "lexical": False, "chunking": {"mode": "tokens", "size": 64}}
    r = c.post("/v1/collections", json=body)
    assert r.status_code == 201, r.text
    assert r.json()["lexical"] is False and r.json()["search"]["mode"] == "dense"
    docs = _docs()
    job = c.post("/v1/collections/fast/documents", json={"documents": docs}).json()
    assert wait_job(c, job["job_id"])["status"] == "done"
    _make(c)  # a lexical collection beside it: its FTS rows are the only ones
    kb_chunks = c.get("/v1/collections/kb").json()["chunks"]
    db = tmp_path / "data" / "store.db"

    def check_fast() -> None:
        r = _query(c, "fast", text="zebra17", k=3)  # text queries default to dense here
        assert r.json()["mode"] == "dense" and _ids(r)
        for mode in ("lexical", "hybrid"):
            r = _query(c, "fast", text="zebra17", mode=mode)
            assert r.status_code == 422, r.text
            message = r.json()["error"]["message"]
            assert '"lexical": false' in message and '"mode": "dense"' in message
        assert _ids(_query(c, "kb", text="zebra17", mode="lexical"))[0] == "d17"

    check_fast()
    r = c.patch("/v1/collections/fast", json={"search": {"mode": "hybrid"}})
    assert r.status_code == 422 and '"mode": "dense"' in r.json()["error"]["message"]
    assert c.delete("/v1/collections/fast/documents/d3").status_code == 200
    assert _fts_rows(db) == kb_chunks
    server.stop()
    store = Store(db)
    store.lexical_check()
    store.close()
    backup(tmp_path / "data", tmp_path / "bk")
    restore(tmp_path / "bk", tmp_path / "restored")
    assert _fts_rows(tmp_path / "restored" / "store.db") == kb_chunks
    server = make_server(env, data=tmp_path / "restored")  # the restored copy serves the same
    c = server.client()
    assert c.get("/v1/collections/fast").json()["lexical"] is False
    check_fast()
    _upgrade(c, "fast")
    r = c.post("/v1/collections/fast/upgrade/cutover", json={"force": True})
    assert r.status_code == 200, r.text
    r = c.post("/v1/collections/fast/retire", json={})
    assert r.status_code == 200, r.text
    check_fast()  # the new space's chunks are dense-only too
    assert c.delete("/v1/collections/fast").status_code == 200
    server.stop()
    assert _fts_rows(tmp_path / "restored" / "store.db") == kb_chunks
    store = Store(tmp_path / "restored" / "store.db")
    store.lexical_check()
    store.close()
