"""The inference autoscaling policy: its mapping onto Ray Serve's autoscaling_config and the
replica count each signal asks for (Ray applies bounds and delays; tested in
tests/integration/test_autoscale.py on a real Ray instance)."""

from __future__ import annotations

import pytest

from embedstack.config import Settings
from embedstack.errors import ConfigError
from embedstack.inference.autoscale import (
    AutoscalePolicy,
    QueuePolicy,
    wanted_replicas,
)
from embedstack.serving.services import autoscale_policy


def test_queue_depth_alone_without_a_gpu() -> None:
    # 12 ongoing requests against 2 per replica: 6 replicas, whatever runs now
    assert wanted_replicas(1, 12, 2.0, {}, 0, {}, 0.7) == 6
    assert wanted_replicas(3, 1, 2.0, {}, 0, {}, 0.7) == 0.5


def test_queued_texts_ask_for_more_when_requests_are_large() -> None:
    texts = {"r1": 3000.0, "r2": 1000.0}
    assert wanted_replicas(2, 2, 2.0, texts, 1000, {}, 0.7) == 4
    assert wanted_replicas(2, 2, 2.0, texts, 0, {}, 0.7) == 1  # 0: not a signal


def test_gpu_utilization_against_its_target() -> None:
    hot = {"r1": 0.98, "r2": 0.98}
    assert wanted_replicas(2, 1, 2.0, {}, 0, hot, 0.7) == pytest.approx(2.8)
    idle = {"r1": 0.2, "r2": 0.15}
    assert wanted_replicas(2, 1, 2.0, {}, 0, idle, 0.7) == pytest.approx(0.5)  # queue wins
    assert wanted_replicas(4, 1, 2.0, {}, 0, idle, 0.7) == pytest.approx(1.0)


def test_ray_accepts_the_mapping_and_resolves_our_policy() -> None:
    pytest.importorskip("ray.serve")
    from ray.serve.config import AutoscalingConfig

    policy = AutoscalePolicy(min_replicas=1, max_replicas=5, target_ongoing_requests=3,
                             upscale_delay_s=2, downscale_delay_s=40, target_queued_texts=500,
                             gpu_target=0.8)  # fmt: skip
    config = AutoscalingConfig(**policy.autoscaling_config())
    assert (config.min_replicas, config.max_replicas) == (1, 5)
    assert config.target_ongoing_requests == 3
    assert (config.upscale_delay_s, config.downscale_delay_s) == (2, 40)
    assert config.policy.get_policy() is QueuePolicy
    made = QueuePolicy(**config.policy.policy_kwargs)
    assert (made.target_queued_texts, made.gpu_target) == (500, 0.8)
    options = policy.deployment_options()
    assert options["graceful_shutdown_timeout_s"] == policy.drain_s
    assert options["max_queued_requests"] == policy.max_queued_requests


def test_settings_map_onto_the_policy() -> None:
    s = Settings(inference_min_replicas=2, inference_max_replicas=6, inference_gpu_target=0.75,
                 inference_replica_gpus=1)  # fmt: skip
    p = autoscale_policy(s)
    assert (p.min_replicas, p.max_replicas, p.gpu_target, p.replica_gpus) == (2, 6, 0.75, 1)
    with pytest.raises(ConfigError, match="inference_max_replicas"):
        autoscale_policy(Settings(inference_min_replicas=4, inference_max_replicas=2))
