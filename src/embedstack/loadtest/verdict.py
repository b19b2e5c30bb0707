"""The promotion gate: load at a multiple of the characterized (or given) peak and a PASS/FAIL
verdict against a p99 SLA, with the evidence."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import orjson

from embedstack.loadtest.characterize import judge
from embedstack.loadtest.run import LoadResult
from embedstack.loadtest.workload import WorkloadError

AT = re.compile(r"^(\d+(?:\.\d+)?)x-peak$")


def multiple(at: str) -> float:
    """'2x-peak' -> 2.0."""
    m = AT.match(at.strip())
    if m is None or float(m.group(1)) <= 0:
        raise WorkloadError(f"--at {at!r}: write a multiple of the peak, e.g. 2x-peak or 1.5x-peak")
    return float(m.group(1))


def _saved(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise WorkloadError(
            f"{path} does not exist: run `embedstack characterize` first (it saves its result "
            "there), or give the peak with --peak-qps"
        )
    saved: dict[str, Any] = orjson.loads(path.read_bytes())
    return saved


def characterized_corpus(path: Path) -> Path | None:
    """The corpus file the saved characterization loaded, when it still exists."""
    found = _saved(path).get("corpus_path")
    return Path(found) if isinstance(found, str) and Path(found).exists() else None


def characterized_peak(path: Path) -> float:
    """The peak rate saved by `embedstack characterize` in `path`."""
    saved = _saved(path)
    peak = saved.get("peak")
    if not isinstance(peak, dict) or not peak.get("qps"):
        raise WorkloadError(f"{path} holds no peak (the characterization found none): "
                            "give the peak with --peak-qps")  # fmt: skip
    return float(peak["qps"])


def verdict(result: LoadResult, peak_qps: float, at: float, sla_p99_ms: float,
            max_failed: float) -> dict[str, Any]:  # fmt: skip
    passed, evidence = judge(result, sla_p99_ms, max_failed)
    return {
        "verdict": "PASS" if passed else "FAIL",
        "peak_qps": peak_qps, "multiple": at, "offered_qps": result.spec.qps,
        "sla_p99_ms": sla_p99_ms, "evidence": evidence, "run": result.to_dict(),
    }  # fmt: skip
