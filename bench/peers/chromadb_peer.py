"""chromadb 1.5.9 (in-process EphemeralClient, its HNSW index) on the bench task.

Run by bench/index.py inside ~/.cache/embedstack/peers/chromadb: python chromadb_peer.py TASK_DIR.
Builds a PersistentClient collection (temp dir) with M=32 (max_neighbors), ef_construction=200,
cosine; sweeps ef_search (reopening the client, since chroma applies ef_search when it loads the
segment) and prints one RESULT line per setting (the driver keeps the fastest reaching 0.95).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from measure import K, best_qps, emit, load_task, recall_at_k, rss_bytes, run_all

EF_SWEEP = (16, 32, 64, 128)


def open_collection(folder: str) -> Any:
    """A fresh client on `folder`: chroma loads the HNSW segment (and its ef_search) on open."""
    import chromadb
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    return chromadb.PersistentClient(path=folder).get_collection("bench")


def main(task: Path) -> None:
    import chromadb

    base, queries, truth = load_task(task)
    with tempfile.TemporaryDirectory() as folder:
        client = chromadb.PersistentClient(path=folder)
        hnsw = {"space": "cosine", "max_neighbors": 32, "ef_construction": 200, "ef_search": 64}
        col = client.create_collection(
            "bench", configuration={"hnsw": hnsw}, embedding_function=None
        )
        rss0 = rss_bytes()
        started = time.perf_counter()
        step = client.get_max_batch_size()
        for start in range(0, len(base), step):
            stop = min(len(base), start + step)
            col.add(ids=[str(i) for i in range(start, stop)], embeddings=base[start:stop])
        build = time.perf_counter() - started
        per_vector = (rss_bytes() - rss0) / len(base)
        for ef in EF_SWEEP:
            col.modify(configuration={"hnsw": {"ef_search": ef}})
            col = open_collection(folder)
            measure(col, ef, queries, truth, per_vector, build)


def measure(col: Any, ef: int, queries: np.ndarray, truth: np.ndarray, per_vector: float,
            build: float) -> None:  # fmt: skip
    def search_one(q: np.ndarray) -> list[int]:
        got = col.query(query_embeddings=[q], n_results=K, include=[])
        return [int(i) for i in got["ids"][0]]

    got = run_all(search_one, queries)
    emit({
        "system": "chromadb", "config": f"hnsw M=32 ef_search={ef}",
        "recall": recall_at_k(got, truth),
        "qps1": best_qps(search_one, queries, 1), "qps2": best_qps(search_one, queries, 2),
        "bytes_per_vector": per_vector, "build_s": build,
    })  # fmt: skip


if __name__ == "__main__":
    main(Path(sys.argv[1]))
