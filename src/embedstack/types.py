"""Frozen value types shared by every layer. Imports nothing of ours."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

Metric = Literal["cosine", "ip", "l2"]
METRICS: tuple[str, ...] = ("cosine", "ip", "l2")
ChunkMode = Literal["tokens", "sentences"]
JSONDict = dict[str, Any]


@dataclass(frozen=True)
class ModelSpec:
    """Everything that defines an embedding space. Two specs that differ anywhere are two spaces."""

    name: str
    revision: str
    fingerprint: str  # hash of weights + tokenizer files
    dim: int
    metric: Metric
    max_tokens: int
    pooling: str = "mean"
    normalize: bool = True
    tokenizer: str = ""
    precision: str = "float32"

    @property
    def space_id(self) -> str:
        return space_id_of(asdict(self))


def space_id_of(payload: JSONDict) -> str:
    """A short stable id over a JSON-able description of a space."""
    raw = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return "sp_" + hashlib.sha256(raw).hexdigest()[:16]


def byo_space_id(dim: int, metric: str) -> str:
    """The space of a bring-your-own-vectors collection: only dim and metric define it."""
    return space_id_of({"kind": "byo", "dim": dim, "metric": metric})


@dataclass(frozen=True)
class ChunkingSpec:
    mode: ChunkMode = "tokens"
    size: int = 256  # tokens, special tokens included
    overlap: int = 32


@dataclass(frozen=True)
class IndexSpec:
    type: str = "hnsw"
    params: JSONDict = field(default_factory=dict)


@dataclass(frozen=True)
class Document:
    id: str
    text: str
    metadata: JSONDict = field(default_factory=dict)
    vector: tuple[float, ...] | None = None


@dataclass(frozen=True)
class Chunk:
    document_id: str
    ordinal: int
    text: str
    start: int  # character offsets into the document text
    end: int
    token_count: int
    hash: str

    @property
    def id(self) -> str:
        return f"{self.document_id}#{self.ordinal}"


@dataclass(frozen=True)
class Hit:
    document_id: str
    chunk_id: str
    score: float
    text: str
    metadata: JSONDict
