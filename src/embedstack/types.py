"""Frozen value types shared by every layer. Imports nothing of ours."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields, replace
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

    @classmethod
    def from_json(cls, data: JSONDict) -> ModelSpec:
        """A spec as stored (asdict); keys this version does not know are ignored."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


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


DEFAULT_LEXICAL_FIELDS: tuple[str, ...] = ("title",)


@dataclass(frozen=True)
class RecordTemplate:
    """How a structured record (a CSV row, a JSON object, a Parquet row, a stream message)
    becomes a document: `id` names the field that is the document id, `text` the fields
    joined (with `separator`) into its text, `metadata` the fields kept as its metadata."""

    id: str
    text: tuple[str, ...]
    metadata: tuple[str, ...] = ()
    separator: str = "\n"

    def to_json(self) -> JSONDict:
        return {
            "id": self.id,
            "text": list(self.text),
            "metadata": list(self.metadata),
            "separator": self.separator,
        }

    @classmethod
    def from_json(cls, data: JSONDict) -> RecordTemplate:
        return cls(
            str(data["id"]),
            tuple(data["text"]),
            tuple(data.get("metadata") or ()),
            str(data.get("separator", "\n")),
        )


@dataclass(frozen=True)
class CollectionConfig:
    """A collection's settings, parsed once where the store reads them.

    `model` is None for a bring-your-own-vectors collection (then `model_spec` and `chunking` are
    None too). The stored JSON keeps the shape it always had (`to_json` / `from_json`).
    """

    dim: int
    metric: Metric
    index: IndexSpec
    model: str | None = None
    model_spec: ModelSpec | None = None
    chunking: ChunkingSpec | None = None
    search: JSONDict = field(default_factory=dict)  # query defaults: mode, fusion, alpha, ...
    # the lexical index (storage/lexical.py): off, no FTS rows or trigger work for its chunks;
    # `lexical_fields` are the metadata keys whose values form each chunk's weighted title column
    lexical: bool = True
    lexical_fields: tuple[str, ...] = DEFAULT_LEXICAL_FIELDS
    record: RecordTemplate | None = None  # how structured records become documents

    def with_index(self, index: IndexSpec) -> CollectionConfig:
        return replace(self, index=index)

    def with_search(self, search: JSONDict) -> CollectionConfig:
        return replace(self, search=search)

    def with_record(self, record: RecordTemplate | None) -> CollectionConfig:
        return replace(self, record=record)

    def to_json(self) -> JSONDict:
        out: JSONDict = {
            "model": self.model,
            "model_spec": asdict(self.model_spec) if self.model_spec else None,
            "dim": self.dim,
            "metric": self.metric,
        }
        if self.chunking is not None:
            out["chunking"] = asdict(self.chunking)
        out["index"] = {"type": self.index.type, "params": dict(self.index.params)}
        if self.search:
            out["search"] = dict(self.search)
        if not self.lexical:
            out["lexical"] = False
        if self.lexical_fields != DEFAULT_LEXICAL_FIELDS:
            out["lexical_fields"] = list(self.lexical_fields)
        if self.record is not None:
            out["record"] = self.record.to_json()
        return out

    @classmethod
    def from_json(cls, data: JSONDict) -> CollectionConfig:
        spec = data.get("model_spec")
        chunking = data.get("chunking")
        index = data.get("index") or {}
        record = data.get("record")
        return cls(
            dim=int(data["dim"]),
            metric=data["metric"],
            index=IndexSpec(str(index.get("type", "hnsw")), dict(index.get("params") or {})),
            model=data.get("model"),
            model_spec=ModelSpec.from_json(spec) if spec else None,
            chunking=ChunkingSpec(**chunking) if chunking else None,
            search=dict(data.get("search") or {}),
            lexical=bool(data.get("lexical", True)),
            lexical_fields=tuple(data.get("lexical_fields", DEFAULT_LEXICAL_FIELDS)),
            record=RecordTemplate.from_json(record) if record else None,
        )


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
