"""Process and accelerator gauges, read at scrape time: resident memory of this process, and GPU
utilization and memory through NVML (nvidia-ml-py) when a GPU is present. Without NVML or a GPU
the GPU series are absent (never zeros), so "no GPU" cannot be mistaken for "idle GPU"."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)


def rss_bytes() -> int:
    """Resident set size of this process (Linux /proc; 0 where it cannot be read)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def load_nvml() -> Any | None:
    """The initialized pynvml module when NVML and at least one GPU are present, else None."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        if pynvml.nvmlDeviceGetCount() < 1:
            return None
    except Exception:  # NVMLError: no driver, no device
        return None
    return pynvml


class SystemCollector(Collector):
    """Collects process RSS and, with `nvml` (from load_nvml), per-GPU utilization and memory."""

    def __init__(self, nvml: Any | None) -> None:
        self._nvml = nvml

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "embedstack_process_resident_memory_bytes", "Resident memory of the server process.",
            value=rss_bytes(),
        )  # fmt: skip
        if self._nvml is None:
            return
        util = GaugeMetricFamily(
            "embedstack_gpu_utilization_ratio", "GPU busy share over the last sample period.",
            labels=["gpu"],
        )  # fmt: skip
        used = GaugeMetricFamily("embedstack_gpu_memory_used_bytes", "GPU memory in use.",
                                 labels=["gpu"])  # fmt: skip
        total = GaugeMetricFamily("embedstack_gpu_memory_total_bytes", "GPU memory in all.",
                                  labels=["gpu"])  # fmt: skip
        nvml = self._nvml
        try:
            for i in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(i)
                rates = nvml.nvmlDeviceGetUtilizationRates(handle)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                util.add_metric([str(i)], rates.gpu / 100.0)
                used.add_metric([str(i)], float(memory.used))
                total.add_metric([str(i)], float(memory.total))
        except Exception:
            log.warning("reading GPU metrics through NVML failed", exc_info=True)
            return
        yield util
        yield used
        yield total
