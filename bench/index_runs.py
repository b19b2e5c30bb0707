"""The measured runs behind bench/index.py: our index types, raw faiss at the same parameters,
and peers in their own venvs (bench/peers/*.py, one subprocess each)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent / "peers"))
from measure import K, best_qps, interleaved, recall_at_k, run_all

from embedstack.index import structures
from embedstack.index.factory import create_index

PEERS_HOME = Path.home() / ".cache" / "embedstack" / "peers"
PEER_PACKAGES = {
    "chromadb": ["chromadb==1.5.9"],
    "lancedb": ["lancedb==0.40.0", "pyarrow"],
    "hnswlib": ["numpy", "hnswlib==0.8.0"],
}
Search = Callable[[np.ndarray], np.ndarray]


@dataclass
class Row:
    system: str  # "embedstack", "faiss (raw)", "hnswlib (raw)", or a peer's name
    config: str
    recall: float
    qps1: float
    qps2: float | None = None
    bytes_per_vector: float | None = None
    build_s: float | None = None
    cpu_us1: float | None = None  # CPU microseconds per query, 1 thread (load-independent)
    sweep: bool = False  # a point on a knob sweep (plotted, not tabled)
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Built:
    """A built index (ours or raw) with its search function, before speed is measured."""

    row: Row
    search: Search
    index: Any


def knob_label(knobs: dict[str, int]) -> str:
    return ", ".join(f"{k}={v}" for k, v in knobs.items()) or "exact"


def build_ours(
    index_type: str, params: dict[str, Any], base: np.ndarray, queries: np.ndarray,
    truth: np.ndarray, build_threads: int,
) -> Built:  # fmt: skip
    faiss.omp_set_num_threads(build_threads)
    started = time.perf_counter()
    index: Any = create_index(index_type, base.shape[1], "cosine", params)
    index.add(np.arange(len(base), dtype=np.int64), base)
    build = time.perf_counter() - started
    faiss.omp_set_num_threads(1)  # searches: one OpenMP thread, concurrency from callers

    def search(q: np.ndarray) -> np.ndarray:
        return index.search(q[None, :], K)[1][0]

    knobs = dict(getattr(index, "knobs", {}))
    extra = {
        "type": index_type, "knobs": knobs, "gate": getattr(index, "gate", {}),
        "params": params, "shape": dict(getattr(index, "_shape", {})),
    }  # fmt: skip
    recall = recall_at_k(run_all(search, queries), truth)
    trained = getattr(index, "trained", True)
    label = knob_label(knobs) if trained else "untrained: exact buffer"
    row = Row("embedstack", f"{index_type} ({label})", recall, 0.0,
              bytes_per_vector=index.memory_bytes() / index.count(), build_s=build,
              extra=extra)  # fmt: skip
    return Built(row, search, index)


def sweep_ours(
    built: Built, sweep: dict[str, list[int]], queries: np.ndarray, truth: np.ndarray
) -> list[Row]:
    """Per-call knob overrides on the built index: recall and 1-thread QPS (for the plot)."""
    rows = []
    index_type, knobs = built.row.extra["type"], built.row.extra["knobs"]
    for knob, values in sweep.items():
        for value in values:
            if value == knobs.get(knob):
                continue

            def swept(q: np.ndarray, knob: str = knob, value: int = value) -> np.ndarray:
                return built.index.search(q[None, :], K, **{knob: value})[1][0]

            recall = recall_at_k(run_all(swept, queries), truth)
            qps = best_qps(swept, queries, 1)
            rows.append(Row("embedstack", f"{index_type} {knob}={value}", recall, qps, sweep=True))
    return rows


def build_raw(
    ours: Built, base: np.ndarray, queries: np.ndarray, truth: np.ndarray, build_threads: int
) -> Built | None:
    """The same faiss structure and knobs as ours, built and queried with the plain faiss API."""
    index_type = ours.row.extra["type"]
    if index_type in ("scann", "binary"):  # no plain-faiss twin of the same search path
        return None
    trained = getattr(ours.index, "trained", True)  # untrained: ours serves from a Flat buffer
    key = structures.factory_key(index_type, ours.row.extra["shape"]) if trained else "Flat"
    knobs = ours.row.extra["knobs"] if trained else {}
    faiss.omp_set_num_threads(build_threads)
    started = time.perf_counter()
    raw: Any = faiss.index_factory(base.shape[1], key, faiss.METRIC_INNER_PRODUCT)
    if "HNSW" in key:
        raw.hnsw.efConstruction = int(ours.index.params["ef_construction"])
    if not raw.is_trained:
        sample = np.random.default_rng(0).permutation(len(base))[: structures.TRAIN_SAMPLE_MAX]
        raw.train(base[np.sort(sample)])
    raw.add(base)
    build = time.perf_counter() - started
    faiss.omp_set_num_threads(1)
    set_knobs(raw, knobs)

    def search(q: np.ndarray) -> np.ndarray:
        return raw.search(q[None, :], K)[1][0]

    recall = recall_at_k(run_all(search, queries), truth)
    size = len(faiss.serialize_index(raw)) / raw.ntotal
    row = Row("faiss (raw)", f"{key} ({knob_label(knobs)})", recall, 0.0, bytes_per_vector=size,
              build_s=build, extra={"type": index_type})  # fmt: skip
    return Built(row, search, raw)


def set_knobs(structure: Any, knobs: dict[str, int]) -> None:
    """Plain faiss style: search parameters as attributes of the index."""
    if "ef_search" in knobs:
        structure.hnsw.efSearch = max(K, knobs["ef_search"])
    if "nprobe" in knobs:
        faiss.extract_index_ivf(structure).nprobe = knobs["nprobe"]
    if "refine_factor" in knobs:
        refine: Any = faiss.downcast_index(structure)
        refine.k_factor = float(knobs["refine_factor"])


def raw_on_our_structure(ours: Built, queries: np.ndarray, truth: np.ndarray) -> Built | None:
    """Plain faiss calls on the very structure inside our index: same graph or lists, same
    knobs, so the difference to ours is our search path alone (independently built HNSW graphs
    differ run to run). Our index passes its knobs per call, so setting attributes is harmless."""
    structure = getattr(ours.index, "_faiss", None)
    if structure is None or not getattr(ours.index, "trained", True):
        return None
    set_knobs(structure, ours.row.extra["knobs"])

    def search(q: np.ndarray) -> np.ndarray:
        return structure.search(q[None, :], K)[1][0]

    recall = recall_at_k(run_all(search, queries), truth)
    label = f"same structure ({knob_label(ours.row.extra['knobs'])})"
    row = Row("faiss (raw)", label, recall, 0.0, extra={"type": ours.row.extra["type"],
                                                       "same_structure": True})  # fmt: skip
    return Built(row, search, structure)


def one_omp_thread() -> None:
    faiss.omp_set_num_threads(1)


def measure_speed(builds: list[Built], queries: np.ndarray) -> None:
    """QPS at 1 and 2 threads and CPU us/query, interleaving ours and raw round by round."""
    for threads in (1, 2):  # each measuring thread sets 1 OpenMP thread (a per-thread setting)
        speeds = interleaved([b.search for b in builds], queries, threads, init=one_omp_thread)
        for b, (qps, cpu_us) in zip(builds, speeds, strict=True):
            if threads == 1:
                b.row.qps1, b.row.cpu_us1 = qps, cpu_us
            else:
                b.row.qps2 = qps


def ensure_venv(name: str, log: Callable[[str], None]) -> Path:
    """~/.cache/embedstack/peers/<name>, created with python3 -m venv + pip on first use."""
    home = PEERS_HOME / name
    python = home / "bin" / "python"
    marker = home / ".installed"
    if marker.exists():
        return python
    log(f"creating venv for {name} at {home} (first run only)")
    subprocess.run(["python3", "-m", "venv", str(home)], check=True)
    subprocess.run([str(python), "-m", "pip", "install", "-q", *PEER_PACKAGES[name]], check=True)
    marker.write_text("ok\n")
    return python


def run_peer(name: str, task: Path, timeout_s: int, log: Callable[[str], None]) -> list[Row]:
    try:
        python = ensure_venv(name, log)
    except subprocess.CalledProcessError as exc:
        log(f"{name}: install failed ({exc}); skipped")
        return []
    script = Path(__file__).resolve().parent / "peers" / f"{name}_peer.py"
    env = {**os.environ, "RUST_LOG": "error", "PYTHONWARNINGS": "ignore"}
    try:
        done = subprocess.run([str(python), str(script), str(task)], capture_output=True,
                              text=True, timeout=timeout_s, check=False, env=env)  # fmt: skip
    except subprocess.TimeoutExpired:
        log(f"{name}: timed out after {timeout_s}s; skipped")
        return []
    rows = [Row(**json.loads(line[len("RESULT ") :])) for line in done.stdout.splitlines()
            if line.startswith("RESULT ")]  # fmt: skip
    if done.returncode != 0 or not rows:
        log(f"{name}: exit {done.returncode}: {done.stderr[-1500:]}")
    return rows
