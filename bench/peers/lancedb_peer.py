"""lancedb 0.40.0 (embedded, local directory) on the bench task.

Run by bench/index.py inside ~/.cache/embedstack/peers/lancedb: python lancedb_peer.py TASK_DIR.
Measures brute force (no index) and its ANN indexes (IVF_HNSW_SQ, IVF_PQ with refine) over a
few settings; prints one RESULT line each (the driver keeps the fastest reaching recall >= 0.95).
"""

from __future__ import annotations

import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import K, best_qps, emit, load_task, recall_at_k, run_all


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(
    tbl: Any,
    queries: np.ndarray,
    truth: np.ndarray,
    config: str,
    tune: Any,
    size: float,
    build: float,
) -> None:
    def search_one(q: np.ndarray) -> list[int]:
        got = tune(tbl.search(q).metric("cosine").limit(K).select(["id"])).to_arrow()
        return got.column("id").to_pylist()

    got = run_all(search_one, queries)
    emit(
        {
            "system": "lancedb",
            "config": config,
            "recall": recall_at_k(got, truth),
            "qps1": best_qps(search_one, queries, 1),
            "qps2": best_qps(search_one, queries, 2),
            "bytes_per_vector": size,
            "build_s": build,
        }
    )


def main(task: Path) -> None:
    import lancedb
    import pyarrow as pa

    base, queries, truth = load_task(task)
    n, dim = base.shape
    with tempfile.TemporaryDirectory() as tmp:
        db = lancedb.connect(tmp)
        started = time.perf_counter()
        vectors = pa.FixedSizeListArray.from_arrays(pa.array(base.ravel()), dim)
        tbl = db.create_table("bench", data=pa.table({"id": np.arange(n), "vector": vectors}))
        build = time.perf_counter() - started
        size = dir_bytes(Path(tmp)) / n
        measure(tbl, queries, truth, "brute force (no index)", lambda b: b, size, build)
        partitions = max(1, int(math.sqrt(n)))
        started = time.perf_counter()
        tbl.create_index(metric="cosine", index_type="IVF_HNSW_SQ", num_partitions=partitions // 4)
        build = time.perf_counter() - started
        size = dir_bytes(Path(tmp)) / n
        for nprobes, ef in ((16, 128), (32, 200)):
            measure(
                tbl,
                queries,
                truth,
                f"IVF_HNSW_SQ nprobes={nprobes} ef={ef}",
                lambda b, p=nprobes, e=ef: b.nprobes(p).ef(e),
                size,
                build,
            )
        started = time.perf_counter()
        tbl.create_index(
            metric="cosine",
            index_type="IVF_PQ",
            num_partitions=partitions,
            num_sub_vectors=dim // 8,
            replace=True,
        )
        build = time.perf_counter() - started
        size = dir_bytes(Path(tmp)) / n
        for nprobes, refine in ((40, 20), (80, 30)):
            measure(
                tbl,
                queries,
                truth,
                f"IVF_PQ nprobes={nprobes} refine={refine}",
                lambda b, p=nprobes, r=refine: b.nprobes(p).refine_factor(r),
                size,
                build,
            )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
