"""Create, validate and load index backends by type name.

Types: exact (numpy), flat, hnsw, hnsw_sq8, sq8, ivf_flat, ivf_pq, binary (faiss) and scann
(optional extra: `pip install embedstack[scann]`). Parameters and defaults are listed in params.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedstack.errors import InvalidInput
from embedstack.index.base import MaintainedIndex
from embedstack.index.binary import BinaryIndex
from embedstack.index.common import read_meta
from embedstack.index.exact import ExactIndex
from embedstack.index.faiss_index import FAISS_TYPES, FaissIndex
from embedstack.index.params import INDEX_TYPES, check_type, validate_params

__all__ = ["INDEX_TYPES", "create_index", "load_index", "validate_index_params"]


def validate_index_params(index_type: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Return `params` with defaults filled; raise InvalidInput naming the fix otherwise."""
    full = validate_params(index_type, params)
    if index_type == "scann":
        from embedstack.index.scann_index import require_scann

        require_scann()
    return full


def create_index(
    index_type: str, dim: int, metric: str, params: dict[str, Any] | None = None
) -> MaintainedIndex:
    """A new empty index of `index_type` (one of INDEX_TYPES)."""
    full = validate_index_params(index_type, params)
    if index_type == "exact":
        return ExactIndex(dim, metric)
    if index_type == "binary":
        return BinaryIndex(dim, metric, full)
    if index_type == "scann":
        from embedstack.index.scann_index import ScannIndex

        return ScannIndex(dim, metric, full)
    return FaissIndex(dim, metric, index_type, full)


def load_index(path: Path) -> MaintainedIndex:
    """Load an index saved by any backend's `save(path)`."""
    index_type = str(read_meta(Path(path)).get("type"))
    check_type(index_type)
    if index_type == "exact":
        return ExactIndex.load(path)
    if index_type == "binary":
        return BinaryIndex.load(path)
    if index_type == "scann":
        from embedstack.index.scann_index import ScannIndex

        return ScannIndex.load(path)
    if index_type not in FAISS_TYPES:
        raise InvalidInput(f"index type {index_type!r} cannot be loaded here")
    return FaissIndex.load(path)
