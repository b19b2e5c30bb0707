"""The CLI as a person uses it: --help, ingest a folder with a progress bar, query a server."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import orjson

from embedstack.testing import EMBEDSTACK, free_port
from tests.conftest import DATA, Server, load_jsonl, server_env
from tests.unit.test_cli_errors import COMMANDS as CLI_COMMANDS


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EMBEDSTACK, *args], env=env or server_env(), capture_output=True, text=True, timeout=300
    )


COMMANDS = sorted(CLI_COMMANDS)  # one list of the commands: tests/unit/test_cli_errors.py


def test_help_explains_every_command() -> None:
    top = _run("--help")
    assert top.returncode == 0
    listed = {line.split()[0] for line in top.stdout.split("Commands:")[1].splitlines() if line}
    assert listed == set(COMMANDS), top.stdout
    for command in COMMANDS:
        sub = _run(command, "--help")
        assert sub.returncode == 0 and len(sub.stdout.splitlines()) > 5, sub.stdout


def test_closed_port_and_bad_settings_are_one_line_without_traceback(tmp_path: Path) -> None:
    port = free_port()
    for args in (("query", "x", "-c", "kb"), ("rollback", "-c", "kb"), ("retire", "-c", "kb"),
                 ("upgrade", "-c", "kb", "--model", "hashing-test-b")):  # fmt: skip
        out = _run(*args, "--url", f"http://127.0.0.1:{port}")
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert out.stderr.startswith(f"Error: cannot reach http://127.0.0.1:{port}/v1/")
        assert len(out.stderr.strip().splitlines()) == 1, out.stderr
    pins = '{"all-MiniLM-L6-v2": "no-such-backend"}'
    for env, said in (({"EMBEDSTACK_MODEL_BACKENDS": pins}, "which this machine cannot run"),
                      ({"EMBEDSTACK_MODEL_BACKENDS": "{oops"}, "does not parse")):  # fmt: skip
        out = _run("serve", "--port", str(port), "--data-dir", str(tmp_path / "d"),
                   env=server_env(**env))  # fmt: skip
        assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: configuration: "), out.stderr
        assert said in lines[0]


def test_ingest_folder_and_jsonl_then_query(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "cats.md").write_text("Cats are small domesticated carnivorous mammals.")
    (folder / "rust.txt").write_text("Rust is a systems programming language focused on safety.")
    jsonl = tmp_path / "pydoc.jsonl"
    docs = load_jsonl(DATA / "pydoc_sections.jsonl")[:20]
    jsonl.write_bytes(b"\n".join(orjson.dumps(d) for d in docs))
    data = tmp_path / "data"
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    first = _run("ingest", str(folder), "-c", "notes", "--data-dir", str(data), env=env)
    assert first.returncode == 0, first.stderr
    assert "queued 2 documents" in first.stdout
    second = _run("ingest", str(jsonl), "-c", "notes", "--data-dir", str(data), env=env)
    assert second.returncode == 0, second.stderr
    assert "queued 20 documents" in second.stdout

    server = make_server(env, data=data)
    try:
        out = _run("query", "cats mammals", "-c", "notes", "-k", "3", "--url", server.url, env=env)
        assert out.returncode == 0, out.stderr
        assert "cats.md" in out.stdout and "score" in out.stdout
        raw = _run("query", "programming language", "-c", "notes", "--url", server.url,
                   "--json", "--filter", '{"source": {"$ne": null}}', env=env)  # fmt: skip
        hits = orjson.loads(raw.stdout)["hits"]
        assert {h["document_id"] for h in hits} <= {"cats.md", "rust.txt"}
        missing = _run("query", "x", "-c", "nope", "--url", server.url, env=env)
        assert missing.returncode != 0 and "does not exist" in missing.stderr
        # one line, naming what answered: "... (POST http://.../v1/collections/nope/query ...)"
        assert len(missing.stderr.strip().splitlines()) == 1, missing.stderr
        assert f"POST {server.url}/v1/collections/nope/query answered 404" in missing.stderr
    finally:
        server.stop()


def test_ingest_reports_bad_jsonl(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "text": "ok"}\n{"id": "b", "txt": "no text field"}\n')
    out = _run("ingest", str(bad), "-c", "x", "--data-dir", str(tmp_path / "d"),
               env=server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test"))  # fmt: skip
    assert out.returncode != 0 and "bad.jsonl:2" in out.stderr


def test_upgrade_rollback_retire_commands(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    server = make_server(env)
    try:
        with server.client() as c:
            assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
            docs = load_jsonl(DATA / "pydoc_sections.jsonl")[:30]
            c.post("/v1/collections/kb/documents", json={"documents": docs})
        evalset = tmp_path / "eval.jsonl"
        evalset.write_bytes(b"\n".join(
            orjson.dumps({"query": d["metadata"]["title"], "document_id": d["id"]}) for d in docs  # type: ignore[index]
        ))  # fmt: skip
        out = _run("upgrade", "-c", "kb", "--model", "hashing-test-b", "--eval", str(evalset),
                   "--k", "5", "--max-recall-drop", "1", "--url", server.url, env=env)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "recall@5" in out.stdout and "gate passed" in out.stdout
        assert "now serves" in out.stdout
        back = _run("rollback", "-c", "kb", "--url", server.url, env=env)
        assert back.returncode == 0 and "again" in back.stdout, back.stderr
        gone = _run("retire", "-c", "kb", "--url", server.url, env=env)
        assert gone.returncode == 0 and "retired sp_" in gone.stdout, gone.stderr
        again = _run("rollback", "-c", "kb", "--url", server.url, env=env)
        assert again.returncode != 0 and "no previous space" in again.stderr
    finally:
        server.stop()


def test_ingest_create_takes_chunking_defaults_from_the_model(tmp_path: Path) -> None:
    from embedstack.storage.store import Store

    doc = tmp_path / "a.txt"
    doc.write_text("A short note about chunking defaults.")
    data = tmp_path / "data"
    l3 = ("--create", "--model", "paraphrase-MiniLM-L3-v2", "--no-wait", "--data-dir", str(data))
    out = _run("ingest", str(doc), "-c", "small", *l3)
    assert out.returncode == 0, out.stderr
    out = _run("ingest", str(doc), "-c", "sized", *l3, "--chunk-size", "64")
    assert out.returncode == 0, out.stderr
    out = _run("ingest", str(doc), "-c", "big", *l3, "--chunk-size", "200")
    assert out.returncode != 0 and "model limit of 128" in out.stderr
    store = Store(data / "store.db")
    try:
        chunking = {r.name: r.config.chunking for r in store.list_collections()}
    finally:
        store.close()
    assert set(chunking) == {"small", "sized"}
    assert chunking["small"] is not None and (
        chunking["small"].size,
        chunking["small"].overlap,
    ) == (128, 16)
    assert chunking["sized"] is not None and (
        chunking["sized"].size,
        chunking["sized"].overlap,
    ) == (64, 8)
