"""Batch invariance, determinism and speed of every all-MiniLM-L6-v2 engine, in one run.

    python bench/invariance.py [--cache-dir DIR] [--texts 384] [--rounds 3] [--backends a,b]

For each engine: the accuracy gate's report (cosine to fp32, recall@10, and the minimum cosine of
a text's vectors alone vs in other batchings, and whether the same calls twice gave the same
bytes; cached per machine, gated now where missing), then texts/s of all engines on the same
texts (evenly spaced over the gate sample: paragraphs and titles), interleaved round by round, as
calls of 64 texts; and how many of 64 of those texts get the very same bytes alone as in one
call of 64 (bitwise batch invariance, stronger than the gate's cosine bound). Prints the CPU
flags that matter and the load average before and after.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np

from common import load_note, say, table
from embedstack.inference.engines.torch import cpu_flags
from embedstack.inference.models.bundled import L6
from embedstack.inference.models.catalog import Catalog
from embedstack.inference.models.invariance import subsample
from embedstack.inference.models.race import race

FLAGS = ("avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--texts", type=int, default=384, help="texts per engine per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--backends", default="", help="comma-separated (default: all but cuda-*)")
    args = ap.parse_args()

    catalog = Catalog(args.cache_dir)
    flags = cpu_flags()
    say(f"CPU: {', '.join(f for f in FLAGS if f in flags) or 'none of ' + ', '.join(FLAGS)}")
    say(f"before: {load_note()}")
    wanted = [b for b in args.backends.split(",") if b]
    variants = [
        v
        for v in catalog.variants(L6.name)
        if (v.backend in wanted if wanted else not v.backend.startswith("cuda-"))
    ]
    reports = {v.backend: catalog.check(L6.name, v.backend) for v in variants}
    engines = {v.backend: v.build() for v in variants}
    texts = catalog.sample().texts
    picked = [texts[int(i)] for i in subsample(len(texts), args.texts)]
    speeds = race(engines, picked, rounds=args.rounds)
    probe = picked[:: max(1, len(picked) // 64)][:64]
    same_rows = {}
    for name, engine in engines.items():
        together = engine.embed_batch(probe)
        alone = np.vstack([engine.embed_batch([t]) for t in probe])
        same_rows[name] = int(np.all(together == alone, axis=1).sum())
    base = speeds.get("onnx-fp32") or max(speeds.values())
    rows = []
    for v in variants:
        r = reports[v.backend]
        rows.append(
            (
                v.backend,
                v.precision,
                "yes" if v.auto else "no",
                f"{r.mean_cosine:.6f} / {r.min_cosine:.6f}",
                f"{r.recall_delta_points:+.2f}",
                "-" if r.batch_min_cosine is None else f"{r.batch_min_cosine:.7f}",
                {None: "-", True: "yes", False: "no"}[r.deterministic],
                f"{same_rows[v.backend]}/{len(probe)}",
                speeds[v.backend],
                f"{speeds[v.backend] / base:.2f}x",
                "passed" if r.passed else "REFUSED: " + "; ".join(r.reasons)[:80],
            )
        )
    table(
        f"{L6.name}: {len(picked)} gate texts x {args.rounds} rounds, calls of 64, interleaved",
        [
            "engine",
            "precision",
            "auto cand.",
            "cos to fp32 mean / min",
            "recall@10",
            "alone vs batched min cos",
            "same bytes twice",
            "alone == batched bytes",
            "texts/s",
            "vs onnx-fp32",
            "gate",
        ],
        rows,
    )
    say(f"after: {load_note()}")
    say(f"auto's cached choice here: {catalog.cached_auto_choice(L6.name) or 'not raced yet'}")


if __name__ == "__main__":
    main()
