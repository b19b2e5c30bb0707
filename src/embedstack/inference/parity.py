"""The embedding-space parity check: a model must still load as the space a collection's vectors
were made in. Ingest and the registry both call this one function."""

from __future__ import annotations

from embedstack.errors import SpaceMismatch
from embedstack.types import ModelSpec


def check_parity(spec: ModelSpec, collection: str, space_id: str) -> None:
    """Refuse a model that no longer loads as the space a collection's vectors were made in."""
    if spec.space_id != space_id:
        raise SpaceMismatch(
            f"collection {collection!r} holds vectors of space {space_id}, but model "
            f"{spec.name!r} now loads as space {spec.space_id} (its weights or settings "
            "changed): they would not be comparable; upgrade the collection to the new space "
            "instead of mixing them"
        )
