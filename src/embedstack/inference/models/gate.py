"""The accuracy gate: a backend is accepted for a model only if it matches fp32 on real text.

Both the fp32 reference and the candidate embed the same real sample (the shipped sample, built
by `python bench/corpora.py gate`: 520 unique section titles of the Python docs as queries, 984
of their first paragraphs as passages, 1,504 texts). Accepted when the per-text cosine between
the two is >= 0.999 on average and >= 0.99 at worst, and recall@10 (titles -> their own section's
paragraphs, exact search) differs by at most 0.5 points. With 520 queries one query moves recall
by about 0.1-0.2 points, so the 0.5-point bound measures a shift, not a single flip (the first
sample, 213 titles of the tutorial, refused SmoothQuant int8 for one or two queries).
The candidate must also be batch-invariant: a text's vector may not depend on what it was batched
with (`inference/models/invariance.py`: 256 texts alone and in other batchings, minimum cosine >=
0.99999); the report says too whether the same calls twice gave the same bytes.
Results are cached per (gate version, weights fingerprint, backend, machine), since the numbers
depend on the CPU's instruction set and on the library versions.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np

from embedstack.fsutil import atomic_write
from embedstack.inference.backend import Embedder
from embedstack.inference.models.invariance import MIN_BATCH_COSINE, check_invariance
from embedstack.inference.vectors import normalize_rows

SAMPLE_FILE = "gate_sample.jsonl"
# part of every cache key: a report of an older gate (2: before batch invariance) is not reused
GATE_VERSION = 2


@dataclass(frozen=True)
class GateThresholds:
    min_mean_cosine: float = 0.999
    min_min_cosine: float = 0.99
    max_recall_delta_points: float = 0.5
    k: int = 10
    min_batch_cosine: float = MIN_BATCH_COSINE  # a text alone vs in other batchings


@dataclass(frozen=True)
class GateSample:
    """Passages, queries, and for each query the passage indices that answer it."""

    passages: list[str]
    queries: list[str]
    relevant: list[list[int]]

    @property
    def texts(self) -> list[str]:
        return [*self.passages, *self.queries]

    def head(self, queries: int) -> GateSample:
        """The first `queries` queries and only the passages they need (a smaller, faster gate)."""
        keep = sorted({p for rel in self.relevant[:queries] for p in rel})
        new = {old: i for i, old in enumerate(keep)}
        return GateSample(
            [self.passages[i] for i in keep],
            self.queries[:queries],
            [[new[p] for p in rel] for rel in self.relevant[:queries]],
        )


def load_sample(path: Path | None = None) -> GateSample:
    """The shipped real-text sample (or a JSONL file of {"query", "passages": [...]} lines)."""
    if path is None:
        raw = (resources.files("embedstack.inference.models") / "data" / SAMPLE_FILE).read_bytes()
    else:
        raw = path.read_bytes()
    passages: list[str] = []
    queries: list[str] = []
    relevant: list[list[int]] = []
    for line in raw.splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        start = len(passages)
        passages.extend(str(p) for p in row["passages"])
        queries.append(str(row["query"]))
        relevant.append(list(range(start, len(passages))))
    return GateSample(passages, queries, relevant)


@dataclass(frozen=True)
class GateReport:
    model: str
    backend: str
    passed: bool
    mean_cosine: float
    min_cosine: float
    recall_reference: float
    recall_candidate: float
    texts: int
    texts_per_s: float  # candidate speed on the sample (this machine, at check time)
    reference_texts_per_s: float
    reasons: list[str] = field(default_factory=list)
    # min cosine of a text's vectors across batchings (alone, mixed); None: not measured
    batch_min_cosine: float | None = None
    deterministic: bool | None = None  # the same calls twice gave the same bytes

    @property
    def batch_invariant(self) -> bool:
        return self.batch_min_cosine is not None and self.batch_min_cosine >= MIN_BATCH_COSINE

    @property
    def recall_delta_points(self) -> float:
        return 100.0 * (self.recall_candidate - self.recall_reference)

    def summary(self) -> str:
        verdict = "passed" if self.passed else "FAILED (" + "; ".join(self.reasons) + ")"
        return (
            f"{self.model} on {self.backend}: cosine to fp32 mean {self.mean_cosine:.6f} "
            f"min {self.min_cosine:.6f}, recall@10 {100 * self.recall_candidate:.2f} vs fp32 "
            f"{100 * self.recall_reference:.2f} ({self.recall_delta_points:+.2f} points) "
            f"on {self.texts} real texts, {self.invariance()}: {verdict}"
        )

    def invariance(self) -> str:
        if self.batch_min_cosine is None:
            return "batch invariance not measured"
        same = {True: "bitwise deterministic", False: "not bitwise deterministic", None: ""}
        return (
            f"alone vs batched min cosine {self.batch_min_cosine:.7f} ({same[self.deterministic]})"
        )


def recall_at_k(
    passages: np.ndarray, queries: np.ndarray, relevant: Sequence[Sequence[int]], k: int
) -> float:
    """Mean over queries of the share of its relevant passages among its top k (exact search)."""
    scores = queries @ passages.T
    k = min(k, passages.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    hits = [
        len(set(row.tolist()) & set(rel)) / len(rel) for row, rel in zip(top, relevant, strict=True)
    ]
    return float(np.mean(hits))


def compare(
    reference: np.ndarray,
    candidate: np.ndarray,
    sample: GateSample,
    thresholds: GateThresholds = GateThresholds(),
) -> tuple[float, float, float, float, list[str]]:
    """(mean cosine, min cosine, recall ref, recall candidate, reasons it fails) on `sample`."""
    ref = normalize_rows(np.asarray(reference, dtype=np.float64))
    cand = normalize_rows(np.asarray(candidate, dtype=np.float64))
    if ref.shape != cand.shape:
        raise ValueError(f"shapes differ: reference {ref.shape}, candidate {cand.shape}")
    cos = np.sum(ref * cand, axis=1)
    n = len(sample.passages)
    rel, k = sample.relevant, thresholds.k
    r_ref = recall_at_k(ref[:n], ref[n:], rel, k)
    r_cand = recall_at_k(cand[:n], cand[n:], rel, k)
    t = thresholds
    reasons = []
    if cos.mean() < t.min_mean_cosine:
        reasons.append(f"mean cosine {cos.mean():.6f} < {t.min_mean_cosine}")
    if cos.min() < t.min_min_cosine:
        reasons.append(f"min cosine {cos.min():.6f} < {t.min_min_cosine}")
    delta = 100.0 * abs(r_cand - r_ref)
    if delta > t.max_recall_delta_points:
        reasons.append(f"recall@{k} moved {delta:.2f} points > {t.max_recall_delta_points}")
    return float(cos.mean()), float(cos.min()), r_ref, r_cand, reasons


def timed_embed(
    embedder: Embedder, texts: Sequence[str], batch: int = 64
) -> tuple[np.ndarray, float]:
    """Vectors of `texts` in batches as the batcher sends them, and texts per second."""
    embedder.embed_batch(texts[:batch])  # warm up (first-run allocations, lazy init)
    started = time.perf_counter()
    parts = [embedder.embed_batch(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    seconds = max(time.perf_counter() - started, 1e-9)
    return np.concatenate(parts), len(texts) / seconds


def run_gate(
    model: str,
    backend: str,
    reference: tuple[np.ndarray, float],
    candidate: Embedder,
    sample: GateSample,
    thresholds: GateThresholds = GateThresholds(),
) -> GateReport:
    """Gate `candidate` against the reference vectors (and speed) of `sample.texts`."""
    ref_vectors, ref_speed = reference
    vectors, speed = timed_embed(candidate, sample.texts)
    mean, worst, r_ref, r_cand, reasons = compare(ref_vectors, vectors, sample, thresholds)
    inv = check_invariance(candidate, sample.texts, vectors)
    if inv.min_cosine < thresholds.min_batch_cosine:
        reasons.append(
            f"batch-dependent: a text alone vs batched min cosine {inv.min_cosine:.7f} < "
            f"{thresholds.min_batch_cosine} ({inv.worst})"
        )
    return GateReport(
        model,
        backend,
        not reasons,
        mean,
        worst,
        r_ref,
        r_cand,
        len(sample.texts),
        speed,
        ref_speed,
        reasons,
        inv.min_cosine,
        inv.deterministic,
    )


def machine_key() -> str:
    """What the gate's numbers depend on besides the model: CPU, flags, library versions."""
    parts = [platform.machine(), str(os.cpu_count())]
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("model name", "flags")):
                parts.append(line.strip())
            if line.startswith("flags"):
                break
    for mod in ("onnxruntime", "torch", "transformers"):
        with contextlib.suppress(Exception):
            from importlib.metadata import version

            parts.append(f"{mod}={version(mod)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


class GateCache:
    """Gate reports in one JSON file, keyed by fingerprint + backend + machine."""

    def __init__(self, path: Path) -> None:
        self._path = path

    @staticmethod
    def key(fingerprint: str, backend: str, machine: str | None = None) -> str:
        return f"v{GATE_VERSION}|{fingerprint[:16]}|{backend}|{machine or machine_key()}"

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads(self._path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def get(self, key: str) -> GateReport | None:
        raw = self._read().get(key)
        if raw is None:
            return None
        try:
            return GateReport(**raw)  # type: ignore[arg-type]
        except TypeError:
            return None

    def put(self, key: str, report: GateReport) -> None:
        self._write(key, asdict(report))

    def _write(self, key: str, value: dict[str, object]) -> None:
        data = self._read()
        data[key] = value
        self._path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self._path, json.dumps(data, indent=1, sort_keys=True).encode())

    def get_choice(self, key: str) -> str | None:
        """A cached auto choice (the winner of a speed race), if any."""
        raw = self._read().get(key)
        return str(raw["choice"]) if isinstance(raw, dict) and "choice" in raw else None

    def get_speeds(self, key: str) -> dict[str, float] | None:
        """The texts/s each backend reached in that cached speed race, if any."""
        raw = self._read().get(key)
        speeds = raw.get("texts_per_s") if isinstance(raw, dict) else None
        if isinstance(speeds, dict):
            return {str(k): float(v) for k, v in speeds.items()}
        return None

    def put_choice(
        self,
        key: str,
        backend: str,
        speeds: Mapping[str, float],
        load: Mapping[str, float] | None = None,
    ) -> None:
        entry: dict[str, object] = {"choice": backend, "texts_per_s": dict(speeds)}
        if load is not None:
            entry["load"] = dict(load)
        self._write(key, entry)

    def get_race_load(self, key: str) -> dict[str, float] | None:
        """The load a cached speed race ran under (before, after, cpus, waited_s), if known."""
        raw = self._read().get(key)
        load = raw.get("load") if isinstance(raw, dict) else None
        return {str(k): float(v) for k, v in load.items()} if isinstance(load, dict) else None

    def all(self) -> dict[str, GateReport]:
        out = {}
        for key in self._read():
            report = self.get(key)
            if report is not None:
                out[key] = report
        return out
