"""Create, validate and load index backends by type name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedstack.errors import InvalidInput
from embedstack.index.base import VectorIndex
from embedstack.index.exact import ExactIndex, read_meta
from embedstack.index.faiss_index import FAISS_TYPES, FaissIndex, validate_faiss_params

INDEX_TYPES: tuple[str, ...] = ("exact", *FAISS_TYPES)


def _check_type(index_type: str) -> None:
    if index_type not in INDEX_TYPES:
        raise InvalidInput(
            f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}"
        )


def validate_index_params(index_type: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """Return `params` with defaults filled; raise InvalidInput naming the fix otherwise."""
    _check_type(index_type)
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"index params must be an object, got {type(params).__name__}")
    return validate_faiss_params(index_type, params)


def create_index(
    index_type: str, dim: int, metric: str, params: dict[str, Any] | None = None
) -> VectorIndex:
    """A new empty index of `index_type` ("exact", "flat" or "hnsw")."""
    full = validate_index_params(index_type, params)
    if index_type == "exact":
        return ExactIndex(dim, metric)
    return FaissIndex(dim, metric, index_type, full)


def load_index(path: Path) -> VectorIndex:
    """Load an index saved by any backend's `save(path)`."""
    index_type = read_meta(Path(path)).get("type")
    _check_type(str(index_type))
    if index_type == "exact":
        return ExactIndex.load(path)
    return FaissIndex.load(path)
