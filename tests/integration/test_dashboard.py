"""The dashboard on a real server: the history route's samples and access rules, and the page
rendered by headless Chromium (installed by the test setup when missing) showing plotted data."""

from __future__ import annotations

import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from embedstack.client import Client
from embedstack.storage.store import Store
from embedstack.testing import CHROMIUM, ensure_binary, screenshot
from tests.conftest import Server, server_env, wait_job

# the page's first three series colours (serving/static/dashboard.html COLORS)
PLOT_COLOURS = ((0x1F, 0x77, 0xB4), (0xD6, 0x27, 0x28), (0x2C, 0xA0, 0x2C))
PANELS = ("latency_ms", "qps", "queue", "batch", "stage_ms", "drift_psi", "drift_alert", "recall",
          "ctr")  # fmt: skip


@pytest.fixture(scope="module")
def busy_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A hashing-model server sampling its history every 0.3 s, after a few seconds of work."""
    data = tmp_path_factory.mktemp("dash") / "data"
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test", EMBEDSTACK_HISTORY_INTERVAL_S="0.3")
    server = Server(data, env).start()
    c = server.client()
    assert c.post("/v1/collections", json={"name": "dash"}).status_code == 201
    docs = [{"id": f"d{i}", "text": f"document {i} about topic {i % 7}"} for i in range(200)]
    job = c.post("/v1/collections/dash/documents", json={"documents": docs}).json()
    assert wait_job(c, job["job_id"])["status"] == "done"
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:  # ~3 s of queries: several samples with traffic
        r = c.post("/v1/collections/dash/query", json={"text": "topic 3", "k": 5})
        assert r.status_code == 200
    yield server
    server.stop()


def test_history_samples_the_servers_own_metrics(busy_server: Server) -> None:
    with Client(busy_server.url, timeout=30) as es:
        history = es.metrics_history()
        assert history.interval_s == 0.3 and history.window_s == 3600
        assert len(history.samples) >= 5
        ts = [s.t for s in history.samples]
        assert ts == sorted(ts)
        busy = [s.values for s in history.samples if s.values.get("qps|ok", 0) > 0]
        assert len(busy) >= 3, history.samples
        assert all(v["latency_ms|p50"] <= v["latency_ms|p90"] <= v["latency_ms|p99"] for v in busy)
        assert any(v.get("batch|texts per batch", 0) >= 1 for v in busy)
        assert all("qps|429" in v for v in busy)
        later = es.metrics_history(since=ts[-2])  # incremental polling: what came after
        assert later.samples and all(s.t > ts[-2] for s in later.samples)


def test_dashboard_plots_live_data_in_headless_chromium(
    busy_server: Server, tmp_path: Path
) -> None:
    url = f"{busy_server.url}/dashboard"
    page = httpx.get(url, timeout=30)
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "connect-src 'self'" in page.headers["content-security-policy"]
    assert not re.search(r"<script[^>]+src=|<link[^>]+href=\"?https?:", page.text)  # no CDN
    shot = screenshot(url, tmp_path / "dashboard.png")
    pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 900
    plotted = sum(
        int((np.abs(pixels - np.array(colour)).sum(axis=2) < 60).sum()) for colour in PLOT_COLOURS
    )
    # legend swatches alone are 30 pixels each: thousands means polylines across the plots
    assert plotted > 2000, f"only {plotted} pixels of plot colour: an empty dashboard?"
    # the DOM after the scripts ran: points plotted, and "no data" exactly where no series is
    browser = ensure_binary(CHROMIUM, "chromium")
    dom = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'dom-profile'}", "--virtual-time-budget=4000",
         "--dump-dom", url],
        capture_output=True, timeout=120, text=True,
    ).stdout  # fmt: skip
    points = re.search(r'data-points="(\d+)"', dom)
    assert points is not None and int(points.group(1)) >= 10, dom[-2000:]
    samples = httpx.get(f"{busy_server.url}/v1/metrics/history", timeout=30).json()["samples"]
    present = {k.split("|")[0] for s in samples for k in s["values"]}
    assert {"latency_ms", "qps", "batch"} <= present
    assert dom.count('class="nodata"') == len([p for p in PANELS if p not in present])


@pytest.fixture(scope="module")
def keyed_server(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[dict[str, str], Server]]:
    data = tmp_path_factory.mktemp("dash-auth") / "data"
    store = Store(data / "store.db")
    keys = {
        "metrics": store.create_key("default", ["metrics"])[0],
        "read": store.create_key("default", ["read"])[0],
        "tenant_admin": store.create_key("alpha", ["admin"])[0],
    }
    store.close()
    server = Server(data, server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test"))
    server.auth = True
    server.start()
    yield keys, server
    server.stop()


def test_history_needs_the_metrics_scope_and_the_page_checks_host_and_origin(
    keyed_server: tuple[dict[str, str], Server],
) -> None:
    keys, server = keyed_server
    anon = httpx.Client(base_url=server.url, timeout=30)
    assert anon.get("/dashboard").status_code == 200  # a static page: no data in it
    assert anon.get("/v1/metrics/history").status_code == 401
    for name in ("read", "tenant_admin"):  # every tenant's names: the operator's metrics scope
        r = server.client(api_key=keys[name]).get("/v1/metrics/history")
        assert r.status_code == 403 and "metrics" in r.json()["error"]["message"], r.text
    ok = server.client(api_key=keys["metrics"]).get("/v1/metrics/history")
    assert ok.status_code == 200 and ok.json()["interval_s"] == 5.0
    assert anon.get("/dashboard", headers={"Host": "evil.example"}).status_code == 421
    evil = {"Origin": "http://evil.example", "Authorization": f"Bearer {keys['metrics']}"}
    assert anon.get("/v1/metrics/history", headers=evil).status_code == 403
