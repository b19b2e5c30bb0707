"""memory_bytes() is honest: it tracks what the structures really hold (their serialized size,
which is their in-memory arrays written out), float re-ranking stores included."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from embedstack.errors import InvalidInput
from embedstack.index.factory import create_index, load_index

DIM = 64
N = 4000
TRAINED = {"train_min": 1000}
CASES: dict[str, dict[str, Any]] = {
    "flat": {},
    "hnsw": {"M": 16, "ef_construction": 40},
    "hnsw_sq8": {"M": 16, "ef_construction": 40, **TRAINED},
    "sq8": TRAINED,
    "ivf_flat": {"nlist": 16, **TRAINED},
    "ivf_pq": {"nlist": 16, "m": 16, "nbits": 6, **TRAINED},
    "ivf_pq_raw": {"nlist": 16, "m": 16, "nbits": 6, "refine_factor": 0, **TRAINED},
    "ivf_pq_sq8": {"nlist": 16, "m": 16, "nbits": 6, "refine_bits": 8, **TRAINED},
}


pytestmark = pytest.mark.usefixtures("single_omp_thread")


def vectors(n: int) -> np.ndarray:
    x = np.random.default_rng(0).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


@pytest.mark.parametrize("name", list(CASES))
def test_memory_matches_serialized_size(name: str) -> None:
    index_type = "ivf_pq" if name.startswith("ivf_pq") else name
    index: Any = create_index(index_type, DIM, "cosine", CASES[name])
    index.add(np.arange(N), vectors(N))
    structure = len(faiss.serialize_index(index._faiss))
    ids = N * (8 + 1 + 16)  # position -> id, live flag, sorted id -> position
    expected = structure + ids + len(index._template)
    assert abs(index.memory_bytes() - expected) <= 0.1 * expected, (index.memory_bytes(), expected)
    if name == "ivf_pq":  # the float store is counted: more than the raw float vectors
        assert index.memory_bytes() > N * DIM * 4
    if name == "ivf_pq_raw":
        assert index.memory_bytes() < N * DIM * 4 / 4
    if name == "ivf_pq_sq8":  # one byte a dimension re-ranks: a quarter of the float store
        assert N * DIM < index.memory_bytes() < N * DIM * 2


def test_sq8_refine_ranks_like_the_float_refine() -> None:
    """refine_bits=8 keeps SQ8 codes for the re-ranking: recall@10 on the vectors themselves
    stays within a few points of the float32 store, and it survives save, load, compaction."""
    x = vectors(N)
    found = {}
    for bits in (32, 8):
        params = {"nlist": 16, "m": 16, "nbits": 6, "refine_bits": bits, "recall_floor": 0,
                  **TRAINED}  # fmt: skip
        index: Any = create_index("ivf_pq", DIM, "cosine", params)
        index.add(np.arange(N), x)
        found[bits] = index.search(x[:200], 10)[1]
        if bits == 8:
            store: Any = faiss.downcast_index(index._faiss.refine_index)
            assert store.sq.qtype == faiss.ScalarQuantizer.QT_8bit and store.code_size == DIM
            index.remove(np.arange(0, N, 7) + 3)  # ids 3, 10, 17, ...: none of 1, 2, 50, 51
            with tempfile.TemporaryDirectory() as tmp:
                index.save(Path(tmp) / "i")
                loaded = load_index(Path(tmp) / "i")
            kept = np.array([1, 2, 50, 51])
            assert np.array_equal(loaded.search(x[kept], 5)[1], index.search(x[kept], 5)[1])
            assert np.array_equal(index.compacted().search(x[kept], 5)[1][:, 0], kept)
    truth = faiss.knn(x[:200], x, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
    recall = {b: np.mean([len(set(f[i]) & set(truth[i])) / 10 for i in range(200)])
              for b, f in found.items()}  # fmt: skip
    assert recall[8] >= recall[32] - 0.05, recall
    with pytest.raises(InvalidInput, match="refine_bits"):
        create_index("ivf_pq", DIM, "cosine", {"refine_bits": 12})


def test_scann_memory_matches_its_files() -> None:
    pytest.importorskip("scann")
    index: Any = create_index("scann", DIM, "cosine", TRAINED)
    index.add(np.arange(N), vectors(N))
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "s")
        on_disk = dir_bytes(Path(tmp) / "s")
    dicts = N * 100  # the id -> datapoint dict is not on disk
    assert abs(index.memory_bytes() - dicts - on_disk) <= 0.25 * on_disk
