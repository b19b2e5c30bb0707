"""The autoscaling policy of the inference deployment, mapped onto Ray Serve's own autoscaler.

Ray Serve runs the control loop: it bounds every decision to [min_replicas, max_replicas] and
applies the upscale/downscale delays. What we add is the signal it scales on, in `QueuePolicy`:

- ongoing requests per replica (Ray's own metric: running in a replica plus queued at the
  callers' handles) against `target_ongoing_requests`, exactly Ray's default policy;
- optionally queued texts per replica (each replica's batcher reports its admitted-but-unfinished
  texts) against `target_queued_texts`: one request may carry 1 text or 2048;
- where replicas see a GPU (NVML), its utilization against `gpu_target`: above it the pool
  grows, below it (and with short queues) it shrinks. Without a GPU the policy uses queue depth
  alone.

The wanted replica count is the largest of these; Ray applies bounds and delays to it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from embedstack.errors import ConfigError

QUEUED_TEXTS = "queued_texts"  # custom metric a replica reports: its batcher's pending texts
GPU_UTILIZATION = "gpu_utilization"  # custom metric: busy share (0..1) of the replica's GPUs
POLICY_PATH = "embedstack.inference.autoscale:QueuePolicy"


@dataclass(frozen=True)
class AutoscalePolicy:
    """How the inference deployment scales, and how each replica takes and drains requests."""

    min_replicas: int = 1
    max_replicas: int = 4
    target_ongoing_requests: float = 2.0  # per replica
    target_queued_texts: int = 0  # per replica; 0: not a signal
    gpu_target: float = 0.7  # GPU busy share per replica, where replicas have a GPU
    upscale_delay_s: float = 5.0
    downscale_delay_s: float = 30.0
    look_back_s: float = 5.0  # Ray averages the metrics over this window
    metrics_interval_s: float = 1.0  # replicas and handles report their metrics this often
    max_ongoing_requests: int = 32  # per replica; beyond it callers' handles queue
    max_queued_requests: int = 512  # per caller; beyond it Overloaded (429) at once
    drain_s: float = 20.0  # a stopping replica finishes its requests for up to this long
    health_check_s: float = 2.0  # how soon Serve notices a dead replica and replaces it
    replica_cpus: float = 1.0
    replica_gpus: float = 0.0

    def __post_init__(self) -> None:
        if self.min_replicas < 0 or self.max_replicas < 1:
            raise ConfigError("inference replicas: min must be >= 0 and max >= 1")
        if self.max_replicas < self.min_replicas:
            raise ConfigError(
                f"inference_max_replicas ({self.max_replicas}) is below inference_min_replicas "
                f"({self.min_replicas}): raise the maximum or lower the minimum"
            )
        if self.look_back_s <= self.metrics_interval_s:
            raise ConfigError(
                f"inference_look_back_s ({self.look_back_s}) must be longer than "
                f"inference_metrics_interval_s ({self.metrics_interval_s})"
            )
        if not 0 < self.gpu_target <= 1:
            raise ConfigError(f"inference_gpu_target {self.gpu_target} must be in (0, 1]")

    def autoscaling_config(self) -> dict[str, Any]:
        """Ray Serve's autoscaling_config for this policy."""
        return {
            "min_replicas": self.min_replicas,
            "initial_replicas": max(1, self.min_replicas),
            "max_replicas": self.max_replicas,
            "target_ongoing_requests": self.target_ongoing_requests,
            "upscale_delay_s": self.upscale_delay_s,
            "downscale_delay_s": self.downscale_delay_s,
            "look_back_period_s": self.look_back_s,
            "metrics_interval_s": self.metrics_interval_s,
            "policy": {
                "policy_function": POLICY_PATH,
                "policy_kwargs": {
                    "target_queued_texts": self.target_queued_texts,
                    "gpu_target": self.gpu_target,
                },
            },
        }

    def deployment_options(self) -> dict[str, Any]:
        """Keyword arguments of `serve.deployment(...)`."""
        return {
            "autoscaling_config": self.autoscaling_config(),
            "max_ongoing_requests": self.max_ongoing_requests,
            "max_queued_requests": self.max_queued_requests,
            # drain before stop: a stopping replica takes no new requests and finishes the
            # ones it has (checked every second) for up to drain_s
            "graceful_shutdown_wait_loop_s": 1.0,
            "graceful_shutdown_timeout_s": self.drain_s,
            "health_check_period_s": self.health_check_s,
            "ray_actor_options": {"num_cpus": self.replica_cpus, "num_gpus": self.replica_gpus},
            "logging_config": {"enable_access_log": False, "log_level": "WARNING"},
        }


def wanted_replicas(
    current: int,
    ongoing: float,
    target_ongoing: float,
    queued_texts: Mapping[Any, float],
    target_queued_texts: int,
    gpu: Mapping[Any, float],
    gpu_target: float,
) -> float:
    """The replica count each signal asks for, the largest of them (before Ray's bounds)."""
    if current == 0:
        return 1.0 if ongoing > 0 else 0.0
    wants = [ongoing / target_ongoing]
    if target_queued_texts > 0 and queued_texts:
        wants.append(sum(queued_texts.values()) / target_queued_texts)
    if gpu:
        mean = sum(gpu.values()) / len(gpu)
        wants.append(current * mean / gpu_target)
    return max(wants)


class QueuePolicy:
    """Ray Serve custom policy (a class: Ray instantiates it once with policy_kwargs); Ray wraps
    it with min/max bounds and the upscale/downscale delays."""

    def __init__(self, target_queued_texts: int = 0, gpu_target: float = 0.7) -> None:
        self.target_queued_texts = target_queued_texts
        self.gpu_target = gpu_target

    def __call__(self, ctx: Any) -> tuple[float, dict[str, Any]]:
        metrics = ctx.aggregated_metrics or {}
        target = ctx.config.get_target_ongoing_requests()
        want = wanted_replicas(
            ctx.current_num_replicas,
            float(ctx.total_num_requests),
            target,
            metrics.get(QUEUED_TEXTS, {}),
            self.target_queued_texts,
            metrics.get(GPU_UTILIZATION, {}),
            self.gpu_target,
        )
        return (math.ceil(want * 1000) / 1000), {}
