"""Binary quantization against the float families: recall@10 vs exact, bytes per vector, QPS.

    .venv/bin/python bench/binary.py                        # GCIDE cache (bench/gcide_vectors.py)
    .venv/bin/python bench/binary.py --store DATA/store.db  # chunk vectors of a server's store

Real all-MiniLM-L6-v2 vectors: the cached GCIDE embeddings (`--n`), or every chunk vector of a
store (e.g. the one `bench/hybrid.py --data DIR` keeps). The last --queries vectors are held out
as queries; truth is exact inner product. Each index is built through the factory as the server
builds it (binary: the recall gate at its default floor 0.9 picks `rescore`), then searched one
query per call on one thread; `rescore` is also swept per call. Prints the load average.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from embedstack.index.factory import create_index  # noqa: E402
from embedstack.index.gate import recall_at_k  # noqa: E402

CONFIGS: list[tuple[str, str, dict[str, Any], list[int]]] = [
    ("flat", "flat", {}, []),
    ("hnsw", "hnsw", {}, []),
    ("sq8", "sq8", {}, []),
    ("binary", "binary", {}, [1, 4, 10, 20]),
    ("binary hnsw M=16", "binary", {"M": 16}, [4, 10]),
]


def store_vectors(path: Path) -> np.ndarray:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    blobs = [r[0] for r in conn.execute("SELECT vector FROM chunks ORDER BY id")]
    vecs = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(blobs), -1)
    _, first = np.unique(vecs, axis=0, return_index=True)  # a chunk in two spaces: keep one
    return np.ascontiguousarray(vecs[np.sort(first)])


def qps(index: Any, queries: np.ndarray, knobs: dict[str, int]) -> tuple[float, np.ndarray]:
    got = np.empty((len(queries), 10), dtype=np.int64)
    started = time.perf_counter()
    for i, q in enumerate(queries):
        got[i] = index.search(q[None, :], 10, **knobs)[1][0]
    return len(queries) / (time.perf_counter() - started), got


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--store", type=Path, default=None, help="a store.db to take vectors from")
    ap.add_argument("--n", type=int, default=10_000, help="GCIDE cache size (without --store)")
    ap.add_argument("--queries", type=int, default=500)
    args = ap.parse_args()
    faiss.omp_set_num_threads(1)
    if args.store:
        vectors = store_vectors(args.store)
    else:
        from gcide_vectors import load_or_embed

        vectors = load_or_embed(args.n)[0]
    base, queries = vectors[: -args.queries], vectors[-args.queries :]
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    truth = exact.search(queries, 10)[1]
    print(f"{len(base)} vectors x {base.shape[1]}, {len(queries)} held-out queries")
    print(f"load average before: {os.getloadavg()}")
    head = f"{'index':<34} {'recall@10':>9} {'bytes/vec':>9} {'QPS':>7} {'build s':>8}"
    print(head + "\n" + "-" * len(head))
    ids = np.arange(len(base), dtype=np.int64)
    for label, index_type, params, sweep in CONFIGS:
        started = time.perf_counter()
        index: Any = create_index(index_type, base.shape[1], "cosine", params)
        index.add(ids, base)
        build = time.perf_counter() - started
        per_vec = index.memory_bytes() / index.count()
        rate, got = qps(index, queries, {})
        knobs = ", ".join(f"{k}={v}" for k, v in index.knobs.items())
        name = f"{label} ({knobs})" if knobs else label
        print(
            f"{name:<34} {recall_at_k(got, truth):>9.3f} {per_vec:>9.0f} {rate:>7.0f} {build:>8.1f}"
        )
        for value in sweep:
            if value == index.knobs.get("rescore"):
                continue
            rate, got = qps(index, queries, {"rescore": value})
            name = f"  {label} rescore={value}"
            print(f"{name:<34} {recall_at_k(got, truth):>9.3f} {per_vec:>9.0f} {rate:>7.0f}")
        if index_type == "binary":
            print(f"  gate: {index.gate}")
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
