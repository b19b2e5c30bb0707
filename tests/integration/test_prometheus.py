"""The shipped alert rules pass `promtool check rules`, and a real Prometheus (Debian's package,
installed by ensure_prometheus when missing) scrapes a real server on loopback, loads the rules
and answers queries for our series."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedstack.testing import PrometheusProcess, ensure_prometheus
from tests.conftest import ROOT, Server, server_env, wait_job
from tests.quality_data import corpus, pydoc_sentences

RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTS = {"EmbedstackLatencySLOBurn", "EmbedstackShedding", "EmbedstackQueueStale",
          "EmbedstackDeadLetters", "EmbedstackQueryDrift", "EmbedstackRecallUnderFloor"}  # fmt: skip


@pytest.fixture(scope="module")
def prometheus_installed() -> None:
    ensure_prometheus()


def test_alert_rules_pass_promtool(prometheus_installed: None) -> None:
    done = subprocess.run(["promtool", "check", "rules", str(RULES)], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in done.stdout


@pytest.fixture()
def scraped(
    prometheus_installed: None, tmp_path: Path
) -> Iterator[tuple[Server, PrometheusProcess]]:
    server = Server(tmp_path / "data", server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")).start()
    prom = None
    try:
        prom = PrometheusProcess(tmp_path / "prom", [f"127.0.0.1:{server.port}"], [RULES]).start()
        yield server, prom
    finally:
        if prom is not None:
            prom.stop()
        server.stop()


def wait_series(
    prom: PrometheusProcess, expr: str, timeout: float = 60.0
) -> list[dict[str, object]]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = prom.query(expr)
        if found:
            return found
        time.sleep(0.5)
    raise AssertionError(f"Prometheus has no {expr!r} after {timeout}s")


def test_prometheus_scrapes_our_series(scraped: tuple[Server, PrometheusProcess]) -> None:
    server, prom = scraped
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "docs"}).status_code == 201
        job = c.post("/v1/collections/docs/documents", json={"documents": corpus()[:40]}).json()
        assert wait_job(c, job["job_id"])["status"] == "done"
        for text in pydoc_sentences()[:20]:
            assert c.post("/v1/collections/docs/query", json={"text": text}).status_code == 200
    up = wait_series(prom, 'up{job="embedstack"} == 1')
    assert len(up) == 1
    stages = wait_series(
        prom, 'sum by (stage) (embedstack_stage_seconds_count{stage=~"forward|search"})'
    )
    assert {s["metric"]["stage"] for s in stages} == {"forward", "search"}  # type: ignore[index]
    assert wait_series(prom, 'embedstack_index_vectors{collection="docs"} > 0')
    assert wait_series(prom, "embedstack_queue_dead_letters")
    assert wait_series(prom, 'embedstack_drift_alert{collection="docs"} == 0')
    assert wait_series(prom, "embedstack_process_resident_memory_bytes > 0")
    rules = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]
    loaded = {r["name"]: r["health"] for g in rules["groups"] for r in g["rules"]}
    assert set(loaded) == ALERTS
    deadline = time.monotonic() + 30
    while any(h != "ok" for h in loaded.values()) and time.monotonic() < deadline:
        time.sleep(1)  # rules report "unknown" until their first evaluation
        rules = httpx.get(f"{prom.url}/api/v1/rules", timeout=10).json()["data"]
        loaded = {r["name"]: r["health"] for g in rules["groups"] for r in g["rules"]}
    assert all(h == "ok" for h in loaded.values()), loaded
