"""Layer shares and utilization from /metrics deltas (embedstack.loadtest.layers)."""

from __future__ import annotations

import pytest
from prometheus_client import generate_latest

from embedstack.loadtest import layers
from embedstack.obs.metrics import Metrics

QUERY = "/v1/collections/{name}/query"


def _snap(m: Metrics) -> layers.Snapshot:
    return layers.parse(generate_latest(m.registry).decode())


def _traffic(m: Metrics) -> None:
    for _ in range(100):
        m.http_latency.labels(QUERY, "POST", "200").observe(0.020)
    for _ in range(25):  # 4 queries per batch
        m.inference_latency.labels("mini").observe(0.008)
        m.batch_size.labels("mini").observe(4)
    for _ in range(100):
        m.search_latency.labels("docs").observe(0.002)


def test_fallback_without_stage_histograms_says_so() -> None:
    m = Metrics()
    before = _snap(m)
    _traffic(m)
    found = layers.breakdown(layers.delta(before, _snap(m)), wall_s=1.0, search_threads=2)
    assert "fallback" in found["source"] and found["query_mean_ms"] == pytest.approx(20.0)
    rows = {r["layer"]: r for r in found["layers"]}
    assert rows["inference"]["mean_ms"] == pytest.approx(8.0)
    assert rows["inference"]["utilization"] == pytest.approx(0.2)  # 25 x 8 ms in 1 s
    assert rows["index search"]["utilization"] == pytest.approx(0.1)  # 100 x 2 ms / (1 s x 2)
    assert rows["residual (HTTP, event loop, unattributed)"]["share"] == pytest.approx(0.5)
    assert found["texts_per_batch"] == 4


def test_stage_histograms_split_the_query_route_into_layers() -> None:
    m = Metrics()
    stage = m.stage_seconds
    before = _snap(m)
    _traffic(m)
    for _ in range(100):
        stage.labels("batch_wait", "query").observe(0.005)
        stage.labels("search", "query").observe(0.002)
        stage.labels("hydrate", "query").observe(0.001)
        stage.labels("batch_wait", "bulk").observe(1.0)  # ingest's lane: not the queries'
    for _ in range(25):
        stage.labels("forward", "query").observe(0.008)  # once per batch
    found = layers.breakdown(layers.delta(before, _snap(m)), wall_s=1.0, search_threads=2)
    assert found["source"] == "embedstack_stage_seconds"
    rows = {r["layer"]: r for r in found["layers"]}
    assert rows["admission/queue wait"]["mean_ms"] == pytest.approx(5.0)
    assert rows["inference"]["mean_ms"] == pytest.approx(8.0)
    assert rows["index search"]["share"] == pytest.approx(0.1)
    assert rows["store/hydrate"]["mean_ms"] == pytest.approx(1.0)
    assert rows["admission/queue wait"]["utilization"] is None


def test_the_constrained_layer() -> None:
    def row(layer: str, share: float, util: float | None) -> dict[str, object]:
        return {"layer": layer, "share": share, "utilization": util, "capacity": "c"}

    busy = [row("inference", 0.3, 0.9), row("admission/queue wait", 0.6, None)]
    assert layers.constrained(busy, 50.0)[0] == "inference"
    idle = [row("inference", 0.3, 0.2), row("admission/queue wait", 0.6, None),
            row("index search", 0.1, 0.1)]  # fmt: skip
    assert layers.constrained(idle, 97.0)[0] == "machine CPU"
    assert layers.constrained(idle, 40.0)[0] == "inference"  # a wait is not a layer's capacity
