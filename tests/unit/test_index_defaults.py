"""Every index type's defaults reach recall@10 >= 0.9 without tuning, on data shaped like real
sentence embeddings (bench/index.py checks the same on real GCIDE embeddings).

The generator mimics all-MiniLM-L6 vectors of GCIDE entries: a shared direction (random pairs
have cosine ~0.16, real: 0.19), topics with sub-topics, and anisotropic noise (nearest neighbour
cosine ~0.6, 10th ~0.5, 100th ~0.4; real: 0.54 / 0.42 / 0.33 on 2,000 entries).
"""

from __future__ import annotations

import numpy as np
import pytest

from embedstack.index.factory import INDEX_TYPES, create_index
from embedstack.index.gate import recall_at_k

DIM = 64
N = 12_000
K = 10


pytestmark = pytest.mark.usefixtures("single_omp_thread")


def embedding_like(n: int, seed: int) -> np.ndarray:
    fixed = np.random.default_rng(0)
    topics = fixed.standard_normal((40, DIM))
    subtopics = topics[fixed.integers(0, 40, 800)] + 0.9 * fixed.standard_normal((800, DIM))
    basis = fixed.standard_normal((DIM, DIM)) * np.linspace(1.5, 0.2, DIM)[:, None]
    shared = fixed.standard_normal(DIM)
    rng = np.random.default_rng(seed)
    noise = rng.standard_normal((n, DIM)) @ basis * (2.2 / np.sqrt(DIM))
    x = subtopics[rng.integers(0, 800, n)] + noise + 0.9 * shared
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    vecs = embedding_like(N, 1)
    queries = embedding_like(300, 2)  # held out: never added
    truth = np.argsort(-(queries @ vecs.T), axis=1)[:, :K]
    return vecs, queries, truth


@pytest.mark.parametrize("index_type", [t for t in INDEX_TYPES if t != "exact"])
def test_defaults_reach_recall_floor(
    index_type: str, data: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    if index_type == "scann":
        pytest.importorskip("scann")
    vecs, queries, truth = data
    index = create_index(index_type, DIM, "cosine")  # no params at all
    index.add(np.arange(N, dtype=np.int64), vecs)
    assert index.trained
    gate = index.gate
    assert gate.get("passed", True), gate
    recall = recall_at_k(index.search(queries, K)[1], truth)
    assert recall >= 0.9, (index_type, recall, gate)
