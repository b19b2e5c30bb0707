"""The dashboard's history sampler over a real Prometheus registry."""

from __future__ import annotations

import pytest

from embedstack.obs.history import History, quantile
from embedstack.obs.metrics import Metrics

QUERY = "/v1/collections/{name}/query"


def test_quantile_interpolates_inside_the_bucket() -> None:
    buckets = {0.1: 0.0, 0.2: 100.0, float("inf"): 100.0}
    assert quantile(buckets, 0.5) == pytest.approx(0.15)
    assert quantile(buckets, 0.99) == pytest.approx(0.199)
    assert quantile({0.1: 0.0, float("inf"): 0.0}, 0.5) is None
    assert quantile({0.1: 0.0, float("inf"): 5.0}, 0.5) == 0.1  # past the last finite bound


def test_samples_rates_percentiles_and_only_the_series_that_exist() -> None:
    m = Metrics()
    h = History(m.registry, interval_s=5.0, window_s=20.0)
    first = h.sample(now=1000.0)
    assert not any(k.startswith(("qps|", "latency_ms|")) for k in first.values)  # no interval yet
    for _ in range(90):
        m.http_latency.labels(QUERY, "POST", "200").observe(0.004)
    for _ in range(10):
        m.http_latency.labels(QUERY, "POST", "200").observe(0.3)
        m.http_latency.labels(QUERY, "POST", "429").observe(0.001)
    for _ in range(50):
        m.http_latency.labels("/metrics", "GET", "200").observe(0.001)  # the dashboard's own
    m.batch_size.labels("mini").observe(8)
    m.batcher_pending.labels("mini", "query").set(3)
    v = h.sample(now=1010.0).values
    assert v["qps|ok"] == pytest.approx(10.0) and v["qps|429"] == pytest.approx(1.0)
    assert v["qps|5xx"] == 0
    assert 2.5 <= v["latency_ms|p50"] <= 5.0 and 250 <= v["latency_ms|p99"] <= 500
    assert v["batch|texts per batch"] == 8 and v["queue|query"] == 3
    assert not any(k.startswith(("drift_psi|", "recall|", "stage_ms|")) for k in v)
    # series with values show up under their panels
    psi = m.drift_psi
    psi.labels("docs", "sp1", "top1").set(0.3)
    stage = m.stage_seconds
    stage.labels("forward", QUERY).observe(0.02)
    h.sample(now=1015.0)
    stage.labels("forward", QUERY).observe(0.04)
    v = h.sample(now=1020.0).values
    assert v["drift_psi|docs/sp1/top1"] == 0.3
    assert v["stage_ms|forward"] == pytest.approx(40.0)  # the interval's mean, not the total
    assert v["qps|ok"] == 0  # nothing new in this interval
    # bounded: window / interval samples
    for t in range(30):
        h.sample(now=1100.0 + 5 * t)
    assert len(h.samples) == 4 and h.since(1240.0)[-1].t == 1245.0
