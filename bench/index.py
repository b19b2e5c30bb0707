"""Index benchmark on real embeddings: every index type vs exact, raw faiss and hnswlib at the same
parameters, and peers (chromadb, lancedb) in their own venvs, all in one run.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/index.py            # N=50,000 GCIDE entries
    .venv/bin/python bench/index.py --n 20000 --no-peers        # quicker

Vectors: the bundled all-MiniLM-L6-v2 over deduplicated GCIDE entries, cached once under
~/.cache/embedstack (bench/gcide_vectors.py). The last --queries entries of the cache are held
out as queries (never indexed); truth is exact inner-product top-10 over the rest.
Per configuration: recall@10 vs exact, QPS at 1 and 2 threads (one query per call), memory
per vector (ours: index.memory_bytes(); raw faiss: serialized size; peers: RSS growth while
building), build seconds. faiss runs its searches with 1 OpenMP thread (ours and raw alike):
concurrency comes from the calling threads, as in the query service.
Writes bench/out/index.json and the table bench/out/index.txt, then the recall-vs-QPS plot
bench/out/index.png. Checks first (bench/common.py preflight) that matplotlib and, without a
vector cache, the GCIDE corpus are there: `make bench-deps` installs both.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import preflight  # noqa: E402
from gcide_vectors import cache_paths, load_or_embed  # noqa: E402
from index_report import plot, table_text, verdicts  # noqa: E402
from index_runs import (  # noqa: E402
    Row,
    build_ours,
    build_raw,
    measure_speed,
    raw_on_our_structure,
    run_peer,
    sweep_ours,
)

CONFIGS: dict[str, tuple[dict[str, Any], dict[str, list[int]]]] = {
    "flat": ({}, {}),
    "hnsw": ({}, {"ef_search": [16, 32, 128, 256]}),
    "hnsw_sq8": ({}, {"ef_search": [32, 128]}),
    "sq8": ({}, {}),
    "ivf_flat": ({}, {"nprobe": [16, 32, 128]}),
    "ivf_pq": ({}, {"nprobe": [16, 32, 128]}),
    "scann": ({}, {"leaves_to_search": [8, 16, 64]}),
    "binary": ({}, {"rescore": [4, 20, 40]}),
}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def split(vectors: np.ndarray, n_queries: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    base, queries = vectors[:-n_queries], vectors[-n_queries:]
    exact = faiss.IndexFlatIP(base.shape[1])
    exact.add(base)
    _, truth = exact.search(queries, 10)
    return np.ascontiguousarray(base), np.ascontiguousarray(queries), truth


def write_task(folder: Path, base: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in (("base", base), ("queries", queries), ("truth", truth)):
        np.save(folder / f"{name}.npy", arr)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=50_000, help="cached GCIDE entries (incl. queries)")
    ap.add_argument("--queries", type=int, default=1000, help="held-out query entries")
    ap.add_argument("--types", default=",".join(CONFIGS), help="our index types to run")
    ap.add_argument("--peers", default="hnswlib,chromadb,lancedb", help="'' for none")
    ap.add_argument("--no-peers", action="store_true")
    ap.add_argument("--peer-timeout", type=int, default=420)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    args = ap.parse_args()
    cached = all(p.exists() for p in cache_paths(args.n))
    preflight(imports=("matplotlib.pyplot",), corpora=() if cached else ("gcide",))
    if "scann" in args.types.split(","):
        try:
            import scann
        except ImportError:
            log("scann not installed (pip install -e '.[scann]', or make bench-deps): skipped")
    load_before = os.getloadavg()
    vectors, _ = load_or_embed(args.n)
    base, queries, truth = split(vectors, args.queries)
    log(f"{len(base)} vectors x {base.shape[1]}, {len(queries)} held-out queries")
    rows: list[Row] = []
    omp_threads = faiss.omp_get_max_threads()
    for index_type in [t for t in args.types.split(",") if t]:
        params, sweep = CONFIGS[index_type]
        if index_type == "scann":
            try:
                import scann  # noqa: F401
            except ImportError:
                continue
        log(f"ours: {index_type}")
        started = time.perf_counter()
        ours = build_ours(index_type, params, base, queries, truth, omp_threads)
        raw = build_raw(ours, base, queries, truth, omp_threads)
        same = raw_on_our_structure(ours, queries, truth)
        group = [b for b in (ours, same, raw) if b is not None]
        measure_speed(group, queries)
        rows += [b.row for b in group]
        rows += sweep_ours(ours, sweep, queries, truth)
        del ours, raw, same, group
        log(f"  {index_type} done in {time.perf_counter() - started:.0f}s")
    peers = [] if args.no_peers else [p for p in args.peers.split(",") if p]
    if peers:
        task = Path.home() / ".cache" / "embedstack" / "bench-task"
        write_task(task, base, queries, truth)
        for name in peers:
            log(f"peer: {name}")
            rows += run_peer(name, task, args.peer_timeout, log)
    load_after = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "n_vectors": len(base),
        "dim": int(base.shape[1]),
        "queries": len(queries),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in load_after],
        "cpus": os.cpu_count(),
        "faiss": faiss.__version__,
    }
    (args.out / "index.json").write_text(
        json.dumps({"meta": meta, "rows": [r.as_dict() for r in rows]}, indent=1)
    )
    table = "\n".join([table_text(rows, meta), *verdicts(rows)]) + "\n"
    print(table, end="")
    (args.out / "index.txt").write_text(table)  # saved before plotting: a plot error loses nothing
    log(f"wrote {args.out / 'index.json'} and {args.out / 'index.txt'}")
    try:
        plot(rows, meta, args.out / "index.png")
    except Exception as exc:
        log(f"plot failed ({exc!r}); the results are in {args.out / 'index.json'}")
        raise SystemExit(1) from exc
    log(f"wrote {args.out / 'index.png'}")


if __name__ == "__main__":
    main()
