"""memory_bytes() is honest: it tracks what the structures really hold (their serialized size,
which is their in-memory arrays written out), float re-ranking stores included."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from embedstack.index.factory import create_index

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


def test_scann_memory_matches_its_files() -> None:
    pytest.importorskip("scann")
    index: Any = create_index("scann", DIM, "cosine", TRAINED)
    index.add(np.arange(N), vectors(N))
    with tempfile.TemporaryDirectory() as tmp:
        index.save(Path(tmp) / "s")
        on_disk = dir_bytes(Path(tmp) / "s")
    dicts = N * 100  # the id -> datapoint dict is not on disk
    assert abs(index.memory_bytes() - dicts - on_disk) <= 0.25 * on_disk
