"""Raw hnswlib 0.8.0 at our hnsw defaults (M=32, ef_construction=200, cosine), sweeping ef.

Run by bench/index.py inside ~/.cache/embedstack/peers/hnswlib: python hnswlib_peer.py TASK_DIR.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import K, best_qps, emit, load_task, recall_at_k, rss_bytes, run_all

EF_SWEEP = (16, 32, 64, 128, 256)


def main(task: Path) -> None:
    import hnswlib

    base, queries, truth = load_task(task)
    n, dim = base.shape
    rss0 = rss_bytes()
    started = time.perf_counter()
    index = hnswlib.Index(space="cosine", dim=dim)
    index.init_index(max_elements=n, ef_construction=200, M=32)
    index.add_items(base, np.arange(n), num_threads=2)
    build = time.perf_counter() - started
    per_vector = (rss_bytes() - rss0) / n
    index.set_num_threads(1)
    for ef in EF_SWEEP:
        index.set_ef(ef)

        def search_one(q: np.ndarray) -> np.ndarray:
            return index.knn_query(q, k=K, num_threads=1)[0][0]

        got = run_all(search_one, queries)
        emit(
            {
                "system": "hnswlib (raw)",
                "config": f"M=32 efC=200 ef={ef}",
                "recall": recall_at_k(got, truth),
                "qps1": best_qps(search_one, queries, 1),
                "qps2": best_qps(search_one, queries, 2),
                "bytes_per_vector": per_vector,
                "build_s": build,
                "sweep": ef != 64,
            }
        )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
