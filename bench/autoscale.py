"""Inference autoscaling under a load step: replicas, queue depth and p99 over time (and a PNG).

A local Ray instance runs the embedder as a Ray Serve deployment (the same code and policy as
`embedstack serve --inference`); callers on this process send 8-text requests through the
deployment handle (half queries, half bulk). The load is --base callers for --warm seconds,
then --step callers for --hold seconds, then --base again for --cool seconds; a sample every
0.5 s records the replica count by state, the texts in flight and the p99 of the last interval.
Ratios are against the first phase of the same run. On one small box the replicas share its
cores: the plot shows the control loop (when replicas start and stop, what p99 does meanwhile,
no failed request), not more throughput.

    python bench/autoscale.py --model hashing-test --step 24 --max-replicas 3 --png autoscale.png
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_note, preflight, say, table


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="hashing-test", help="hashing-test or all-MiniLM-L6-v2")
    ap.add_argument("--base", type=int, default=1, help="callers before and after the step")
    ap.add_argument("--step", type=int, default=24, help="callers during the step")
    ap.add_argument("--warm", type=float, default=10.0, help="seconds before the step")
    ap.add_argument("--hold", type=float, default=30.0, help="seconds of the step")
    ap.add_argument("--cool", type=float, default=30.0, help="seconds after the step")
    ap.add_argument("--max-replicas", type=int, default=3)
    ap.add_argument("--target-ongoing", type=float, default=2.0)
    ap.add_argument("--upscale-delay", type=float, default=1.0)
    ap.add_argument("--downscale-delay", type=float, default=5.0)
    ap.add_argument("--replica-cpus", type=float, default=0.0)
    ap.add_argument("--replica-gpus", type=float, default=0.0)
    ap.add_argument("--png", type=Path, default=Path("autoscale.png"))
    args = ap.parse_args()
    preflight(imports=["ray.serve", "matplotlib"])

    import ray
    from ray import serve

    from embedstack.config import Settings
    from embedstack.inference.autoscale import AutoscalePolicy
    from embedstack.inference.batching.batcher import BatcherConfig
    from embedstack.inference.serve_ray import ServeBatcher, deploy, replica_states
    from embedstack.loadtest.autoscale import LoadStep
    from embedstack.serving.services import build_models

    say(f"[bold]autoscale bench[/bold] ({args.model}): {load_note()}")
    settings = Settings(
        enable_test_models=True,
        default_model=args.model,
        data_dir=Path(tempfile.mkdtemp(prefix="autoscale-")),
        # the bundled model: one backend (no race at each replica's start), a short gate
        model_backends={"all-MiniLM-L6-v2": "onnx-fp32"},
        gate_queries=20,
    )
    policy = AutoscalePolicy(
        min_replicas=1, max_replicas=args.max_replicas,
        target_ongoing_requests=args.target_ongoing, upscale_delay_s=args.upscale_delay,
        downscale_delay_s=args.downscale_delay, look_back_s=2.0, metrics_interval_s=0.5,
        replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus,
    )  # fmt: skip
    t0 = time.perf_counter()
    # a Ray instance of its own: a bare ray.init() joins a cluster already running on the machine
    ray.init(address="local", include_dashboard=False, log_to_driver=False)
    handle = deploy(
        functools.partial(build_models, settings, {}), args.model, BatcherConfig(), policy
    )
    spec = build_models(settings, {}).get(args.model).spec
    say(f"ray + 1 replica up in {time.perf_counter() - t0:.1f} s; policy {policy}")

    def texts(i: int) -> list[str]:
        return [f"request {i} text {j}: autoscaled inference under a load step" for j in range(8)]

    batcher = ServeBatcher(handle, spec)
    load = LoadStep(batcher, texts, lambda: replica_states(args.model))
    load.start()
    phases = [("before", args.base, args.warm), ("step", args.step, args.hold),
              ("after", args.base, args.cool)]  # fmt: skip
    bounds: list[tuple[str, float, float]] = []
    try:
        for name, callers, seconds in phases:
            start = load.elapsed()
            load.set_callers(callers)
            time.sleep(seconds)
            bounds.append((name, start, load.elapsed()))
    finally:
        load.stop()
        serve.shutdown()
        ray.shutdown()
    cols = ["t s", "callers", "running", "starting", "stopping", "in flight", "p99 ms", "done",
            "failed"]  # fmt: skip
    table("replicas, queue depth and p99 over time (0.5 s samples)", cols, load.rows())
    rows = []
    base_p99 = base_rate = None
    step = next(b for b in bounds if b[0] == "step")
    parts = [(name, [s for s in load.samples if start <= s.t < end]) for name, start, end in bounds]
    parts[2:2] = [
        (f"step at {n} running", [s for s in load.samples if step[1] <= s.t < step[2]
                                  and s.running == n])
        for n in sorted({s.running for s in load.samples if step[1] <= s.t < step[2]})
    ]  # fmt: skip
    for name, samples in parts:
        p99s = [s.p99_ms for s in samples if s.p99_ms is not None]
        rate = None  # a rate needs two samples
        if len(samples) > 1 and samples[-1].t > samples[0].t:
            rate = (samples[-1].done - samples[0].done) / (samples[-1].t - samples[0].t)
        p99 = statistics.median(p99s) if p99s else float("nan")
        if base_p99 is None:
            base_p99, base_rate = p99, rate
        rows.append((
            name, max((s.running for s in samples), default=0),
            "-" if rate is None else f"{rate:.0f}",
            f"{rate / base_rate:.2f}x" if rate is not None and base_rate else "-", f"{p99:.1f}",
            f"{p99 / base_p99:.2f}x" if base_p99 else "-",
        ))  # fmt: skip
    table(
        "per phase (p99: median of the 0.5 s samples' p99)",
        ["phase", "max running", "requests/s", "vs before", "p99 ms", "vs before"],
        rows,
    )
    say(f"failed requests: {len(load.failures)}; resent after a replica died: {batcher.resent}")
    for failure in load.failures[:5]:
        say(f"  {failure}")
    plot(load.samples, bounds, args.png)
    say(f"plot: {args.png}; {load_note()}")


def plot(samples: list[Any], bounds: list[tuple[str, float, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.array([s.t for s in samples])
    fig, (ax1, ax2, ax3) = plt.subplots(3, 1, figsize=(10, 8), sharex=True)
    ax1.step(t, [s.running for s in samples], where="post", label="running")
    ax1.step(t, [s.replicas.get("STARTING", 0) for s in samples], where="post", label="starting")
    ax1.step(t, [s.replicas.get("STOPPING", 0) for s in samples], where="post", label="stopping")
    ax1.set_ylabel("replicas")
    ax1.legend(loc="upper right")
    ax2.plot(t, [s.queued for s in samples], label="texts in flight")
    ax2.plot(t, [s.callers for s in samples], label="callers")
    ax2.set_ylabel("queue depth")
    ax2.legend(loc="upper right")
    ax3.plot(t, [np.nan if s.p99_ms is None else s.p99_ms for s in samples], "-o", ms=2)
    ax3.set_ylabel("p99 ms (0.5 s window)")
    ax3.set_yscale("log")
    ax3.set_xlabel("seconds")
    for name, start, _ in bounds:
        for ax in (ax1, ax2, ax3):
            ax.axvline(start, color="grey", lw=0.5)
        ax1.text(start, ax1.get_ylim()[1] * 0.9, f" {name}", fontsize=8)
    fig.suptitle(f"inference autoscaling under a load step ({load_note()})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
