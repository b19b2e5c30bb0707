"""`embedstack loadtest` and `embedstack characterize` against a real server (the hashing test
model): structure and counts, not timing; and the open loop's latency counted from the schedule
against a deliberately serial server."""

from __future__ import annotations

import asyncio
import importlib.util
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

from embedstack.cli import build_cli
from embedstack.loadtest.report import PNG_MISSING
from embedstack.loadtest.run import LoadSpec, run_load
from embedstack.loadtest.workload import Mix
from tests.conftest import DATA, Server, server_env

CORPUS = DATA / "pydoc_sections.jsonl"
CORPUS_DOCS = 213


def _cli(*args: str) -> Result:
    return CliRunner().invoke(build_cli(), list(args), catch_exceptions=False)


def _doc_count(server: Server, collection: str, want: int, timeout: float = 60.0) -> int:
    c = server.client()
    deadline = time.monotonic() + timeout
    found = -1
    while time.monotonic() < deadline:
        found = c.get(f"/v1/collections/{collection}").json()["documents"]
        if found >= want:
            break
        time.sleep(0.2)
    return int(found)


def test_loadtest_mixes_operations_and_accounts_for_every_request(
    hashing_server: Server, tmp_path: Path
) -> None:
    out, png = tmp_path / "lt.json", tmp_path / "lt.png"
    r = _cli("loadtest", "--url", hashing_server.url, "--qps", "40", "--duration", "2",
             "--mix", "query=0.8,ingest=0.2", "--corpus", str(CORPUS), "-c", "lt",
             "--json", str(out), "--png", str(png))  # fmt: skip
    assert r.exit_code == 0, r.output
    d: dict[str, Any] = orjson.loads(out.read_bytes())
    assert d["scheduled"] == 80 and d["offered_qps"] == 40
    assert d["ok"] + d["rejected_429"] + d["errors"] + d["not_sent"] == 80
    assert d["errors"] == 0 and d["not_sent"] == 0, d["error_kinds"]
    ops = d["by_operation"]
    assert set(ops) == {"query", "ingest"}
    assert ops["query"]["count"] > ops["ingest"]["count"] > 0
    assert ops["query"]["count"] + ops["ingest"]["count"] == d["ok"]
    lat = d["latency"]
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["p99.9_ms"] <= lat["max_ms"]
    assert d["achieved_qps"] > 0 and d["send_lag"]["count"] == 80
    assert "p99.9 ms" in r.output and "achieved" in r.output
    # every acknowledged ingest lands: the corpus seed plus the load's documents
    acked = int(ops["ingest"]["count"])
    assert _doc_count(hashing_server, "lt", CORPUS_DOCS + acked) == CORPUS_DOCS + acked
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert PNG_MISSING in r.output and not png.exists()


def test_characterize_then_a_verdict_at_twice_the_peak(
    hashing_server: Server, tmp_path: Path
) -> None:
    saved = tmp_path / "ch.json"
    r = _cli("characterize", "--url", hashing_server.url, "--corpus", str(CORPUS), "-c", "ch",
             "--start-qps", "5", "--factor", "2", "--step-s", "1", "--max-steps", "3",
             "--refine", "0", "--sla-p99-ms", "30000", "--out", str(saved))  # fmt: skip
    assert r.exit_code == 0, r.output
    found: dict[str, Any] = orjson.loads(saved.read_bytes())
    assert [s["qps"] for s in found["steps"]] == [5, 10, 20]
    assert all(s["passed"] and s["scheduled"] == s["qps"] for s in found["steps"]), found["steps"]
    assert found["peak"]["qps"] == 20 and "every step passed" in found["note"]
    assert found["documents"] == CORPUS_DOCS and found["chunks"] >= CORPUS_DOCS
    b = found["bottleneck"]
    names = {row["layer"] for row in b["layers"]}
    assert {"inference", "index search"} <= names, b
    assert b["constrained_layer"] in names | {"machine CPU"}
    assert all(row["share"] is None or 0 <= row["share"] <= 1.0001 for row in b["layers"])
    assert "constrained layer" in r.output
    passed = _cli("loadtest", "--url", hashing_server.url, "-c", "ch", "--at", "2x-peak",
                  "--characterized", str(saved), "--duration", "1", "--sla-p99-ms", "30000",
                  "--png", str(tmp_path / "v.png"))  # fmt: skip
    assert passed.exit_code == 0, passed.output
    assert "2x peak (20.0 -> 40.0 req/s" in passed.output and ": PASS" in passed.output
    failed = _cli("loadtest", "--url", hashing_server.url, "-c", "ch", "--at", "2x-peak",
                  "--peak-qps", "10", "--duration", "1", "--sla-p99-ms", "0.1",
                  "--png", str(tmp_path / "f.png"))  # fmt: skip
    assert failed.exit_code == 1, failed.output
    assert ": FAIL" in failed.output and "FAIL: p99" in failed.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--qps", "5", "--mix", "bogus=1"], "OPERATION=SHARE"),
        (["--at", "2x"], "e.g. 2x-peak"),
        (["--at", "2x-peak", "--characterized", "/nonexistent.json"], "embedstack characterize"),
        ([], "--qps"),
    ],
)
def test_loadtest_bad_arguments_name_the_fix(
    hashing_server: Server, args: list[str], message: str
) -> None:
    r = CliRunner().invoke(build_cli(), ["loadtest", "--url", hashing_server.url, *args])
    assert r.exit_code == 2 and message in r.output, r.output


class _Serial(BaseHTTPRequestHandler):
    """Answers one request at a time, 50 ms each: 20 requests/s at most."""

    lock = threading.Lock()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        with self.lock:
            time.sleep(0.05)
        body = b"{}"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture()
def serial_server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Serial)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    thread.join(timeout=10)


def test_open_loop_latency_counts_from_the_scheduled_time(serial_server: str) -> None:
    """40 requests due over 1 s at a server that finishes 20 per second: the last ones are
    answered about a second after they were due, which a closed loop would never show."""
    spec = LoadSpec(serial_server, 40.0, 1.0, Mix.parse("embed=1"), "x", {}, timeout_s=20)
    result = asyncio.run(run_load(spec, ["some text"], ["a query"]))
    d = result.to_dict()
    assert d["scheduled"] == 40 and d["ok"] == 40, d
    service_ms = 50.0
    assert d["latency"]["max_ms"] >= 0.6 * 40 * service_ms - 1000.0  # queued behind the rest
    assert d["latency"]["p50_ms"] > 3 * service_ms
    assert d["achieved_qps"] < 30  # the server's pace, not the offered 40/s


class _Closing(BaseHTTPRequestHandler):
    """HTTP/1.1 answers that do not say `Connection: close`, on a connection then closed: what
    a keep-alive connection looks like once the server has timed it out."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")
        self.close_connection = True

    def log_message(self, *args: object) -> None:
        pass


def test_a_keep_alive_connection_the_server_closed_is_not_an_error() -> None:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Closing)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}"
        spec = LoadSpec(url, 20.0, 0.5, Mix.parse("embed=1"), "x", {}, timeout_s=20)
        d = asyncio.run(run_load(spec, ["t"], ["q"])).to_dict()
        assert d["ok"] == 10 and d["errors"] == 0, d["error_kinds"]
    finally:
        httpd.shutdown()
        thread.join(timeout=10)


@pytest.fixture(scope="module")
def real_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The bundled all-MiniLM-L6-v2 (pinned onnx-fp32: gated at startup, no background race)."""
    env = server_env(EMBEDSTACK_MODEL_BACKENDS='{"all-MiniLM-L6-v2": "onnx-fp32"}',
                     EMBEDSTACK_HISTORY_INTERVAL_S="0.5")  # fmt: skip
    server = Server(tmp_path_factory.mktemp("lt-real") / "data", env).start(timeout=300)
    yield server
    server.stop()


def test_characterize_and_verdict_on_the_real_model(real_server: Server, tmp_path: Path) -> None:
    saved = tmp_path / "ch.json"
    r = _cli("characterize", "--url", real_server.url, "--corpus", str(CORPUS),
             "--corpus-limit", "40", "-c", "real", "--start-qps", "2", "--factor", "2",
             "--step-s", "2", "--max-steps", "2", "--refine", "0", "--sla-p99-ms", "30000",
             "--out", str(saved))  # fmt: skip
    assert r.exit_code == 0, r.output
    found: dict[str, Any] = orjson.loads(saved.read_bytes())
    assert found["documents"] == 40 and found["peak"]["qps"] == 4
    rows = {row["layer"]: row for row in found["bottleneck"]["layers"]}
    assert rows["inference"]["mean_ms"] > 0 and rows["index search"]["mean_ms"] > 0
    v = _cli("loadtest", "--url", real_server.url, "-c", "real", "--at", "2x-peak",
             "--characterized", str(saved), "--duration", "2", "--sla-p99-ms", "30000",
             "--mix", "query=0.75,ingest=0.25", "--png", str(tmp_path / "v.png"),
             "--json", str(tmp_path / "v.json"))  # fmt: skip
    assert v.exit_code == 0 and ": PASS" in v.output, v.output
    d = orjson.loads((tmp_path / "v.json").read_bytes())["run"]
    assert d["scheduled"] == 16 and d["ok"] == 16
    # the dashboard's history saw the load
    history = real_server.client().get("/v1/metrics/history").json()["samples"]
    assert any(s["values"].get("qps|ok", 0) > 0 for s in history)
    assert any(s["values"].get("batch|texts per batch", 0) >= 1 for s in history)
