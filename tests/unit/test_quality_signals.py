"""The pieces of the quality signals: PSI and KS, the drift monitor's states, the bootstrap
interval of the online recall, the feedback log's rates, the gate's knob search, and the system
collector without a GPU."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from embedstack.errors import InvalidInput, NotFound
from embedstack.index.gate import raise_knobs
from embedstack.obs.drift import DriftMonitor, ks_critical, ks_statistic, psi
from embedstack.obs.feedback import FeedbackLog
from embedstack.obs.recall import RecallWindow, bootstrap_interval, query_recall
from embedstack.obs.system import SystemCollector


def test_psi_and_ks_separate_shifted_from_same() -> None:
    rng = np.random.default_rng(0)
    base, same, shifted = rng.normal(0, 1, 2000), rng.normal(0, 1, 2000), rng.normal(1, 1, 2000)
    assert psi(base, same) < 0.05
    assert psi(base, shifted) > 0.5
    assert ks_statistic(base, same) < ks_critical(2000, 2000)
    assert ks_statistic(base, shifted) > 0.3
    assert ks_statistic(np.array([0.0, 1.0]), np.array([0.0, 1.0])) == 0.0
    assert ks_statistic(np.array([0.0]), np.array([5.0])) == 1.0


def _feed(monitor: DriftMonitor, scores: np.ndarray, vecs: np.ndarray) -> None:
    for s, v in zip(scores, vecs, strict=True):
        monitor.record(float(s), v)


def test_drift_monitor_states() -> None:
    rng = np.random.default_rng(1)
    monitor = DriftMonitor(baseline_size=200, window_size=200, min_window=100)
    monitor.centroid = np.eye(8)[0]
    vecs = rng.normal(0, 1, (800, 8))
    assert monitor.evaluate().state == "collecting baseline"
    _feed(monitor, rng.normal(0.8, 0.05, 200), vecs[:200])
    assert monitor.evaluate().state == "collecting window"
    _feed(monitor, rng.normal(0.8, 0.05, 200), vecs[200:400])
    report = monitor.evaluate()
    assert report.state == "ok" and not report.alert
    assert set(report.psi) == {"top1_score", "centroid_cosine", "norm"}
    _feed(monitor, rng.normal(0.5, 0.05, 200), vecs[400:600] * 3)  # lower scores, longer vectors
    report = monitor.evaluate()
    assert report.alert and report.psi["top1_score"] > 1 and report.psi["norm"] > 1
    monitor.reset()
    assert monitor.evaluate().state == "collecting baseline"


def test_bootstrap_interval_holds_the_mean_and_narrows() -> None:
    rng = np.random.default_rng(2)
    small, large = rng.uniform(0.6, 1.0, 20), rng.uniform(0.6, 1.0, 2000)
    lo_s, hi_s = bootstrap_interval(small)
    lo_l, hi_l = bootstrap_interval(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    window = RecallWindow(size=3)
    assert window.estimate() is None
    for r in (0.0, 1.0, 1.0, 1.0):
        window.add(r)
    estimate = window.estimate()
    assert estimate is not None and estimate.recall == 1.0 and estimate.queries == 3
    assert query_recall(np.array([1, 2, 3]), np.array([3, 4, -1])) == 0.5
    assert query_recall(np.array([1]), np.array([-1])) == 1.0


def test_feedback_log_rates_and_errors() -> None:
    log = FeedbackLog(max_queries=3, k=2)
    a = log.remember("c", "s", ["d1", "d2", "d3"])
    b = log.remember("c", "s", ["d4", "d5", "d6"])
    log.remember("c", "s", ["d7"])
    assert log.record(a, "d2", "click") == (("c", "s"), 2)
    assert log.record(a, "d1", "grade", 2)[1] == 1  # a better rank replaces the first click
    log.record(b, "d6", "click")  # rank 3: outside click-through@2
    stats = log.stats(("c", "s"))
    assert (stats.queries, stats.clicked, stats.graded) == (3, 2, 1)
    assert stats.click_through == pytest.approx(1 / 3)
    assert stats.clicked_mrr == pytest.approx((1 + 1 / 3) / 2)
    with pytest.raises(InvalidInput, match="not among the hits"):
        log.record(a, "d9", "click")
    with pytest.raises(InvalidInput, match="needs 'grade'"):
        log.record(a, "d1", "grade")
    log.remember("c", "s", ["d8"])  # forgets the oldest (a) and its click
    with pytest.raises(NotFound, match="unknown or forgotten"):
        log.record(a, "d1", "click")
    stats = log.stats(("c", "s"))
    assert (stats.queries, stats.clicked) == (3, 1)
    assert log.owner(b) == ("c", "s") and log.owner(a) is None


def test_raise_knobs_doubles_until_the_target_and_reports_capped() -> None:
    curve = {1: 0.5, 2: 0.7, 4: 0.85, 8: 0.93, 16: 0.95}
    result = raise_knobs(lambda k: curve[k["nprobe"]], {"nprobe": 1}, {"nprobe": 16}, 0.9, 0.92)
    assert result.passed and result.knobs == {"nprobe": 8}
    capped = raise_knobs(lambda k: curve[k["nprobe"]], {"nprobe": 1}, {"nprobe": 4}, 0.9, 0.92)
    assert not capped.passed and capped.knobs == {"nprobe": 4}


def test_system_collector_without_a_gpu_exports_no_gpu_series() -> None:
    registry = CollectorRegistry()
    registry.register(SystemCollector(None))
    text = generate_latest(registry).decode()
    assert "embedstack_process_resident_memory_bytes" in text
    assert "embedstack_gpu_" not in text


class _StubNvml:
    """Answers like pynvml on a one-GPU machine (this machine has none: the real NVML path is
    not exercised here)."""

    class _Rates:
        gpu = 40

    class _Memory:
        used, total = 2 << 30, 8 << 30

    def nvmlDeviceGetCount(self) -> int:
        return 1

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> object:
        return self._Rates()

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> object:
        return self._Memory()


def test_system_collector_reads_each_gpu_through_nvml() -> None:
    registry = CollectorRegistry()
    registry.register(SystemCollector(_StubNvml()))
    text = generate_latest(registry).decode()
    assert 'embedstack_gpu_utilization_ratio{gpu="0"} 0.4' in text
    assert 'embedstack_gpu_memory_used_bytes{gpu="0"} 2.147483648e+09' in text
