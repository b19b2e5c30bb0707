"""Request and response bodies of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- OpenAI-compatible embeddings ------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send fields we don't use

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


# -- collections --------------------------------------------------------------------------------
class ChunkingBody(Strict):
    mode: Literal["tokens", "sentences"] = "tokens"
    size: int | None = Field(None, description="tokens per chunk; default: 256 or the model limit")
    overlap: int | None = Field(None, description="tokens shared by neighbours; default: size/8")


class CollectionCreate(Strict):
    name: str = Field(description="1-64 letters, digits, '_', '-', '.'")
    model: str | None = Field(None, description="embedding model; default: the bundled model")
    dim: int | None = Field(None, description="bring-your-own vectors: their dimension")
    metric: Literal["cosine", "ip", "l2"] | None = None
    chunking: ChunkingBody | None = None
    index: dict[str, Any] | None = Field(
        None, description='e.g. {"type": "hnsw", "M": 32, "ef_construction": 200, "ef_search": 64}'
    )


class CollectionPatch(Strict):
    index: dict[str, Any] = Field(
        description='new index settings, e.g. {"type": "hnsw", "M": 16}; built in the background'
    )


# -- documents ----------------------------------------------------------------------------------
class DocumentIn(Strict):
    id: str = Field(min_length=1, max_length=512)
    text: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    vector: list[float] | None = None
    space_id: str | None = None


class DocumentsIn(Strict):
    documents: list[DocumentIn]


# -- query --------------------------------------------------------------------------------------
class QueryIn(Strict):
    text: str | None = None
    vector: list[float] | None = None
    space_id: str | None = None
    k: int = Field(10, ge=1)
    filter: dict[str, Any] | None = None
    group_by: Literal["document"] | None = None
    ef_search: int | None = Field(None, ge=1, le=4096)
    budget_ms: float | None = Field(
        None,
        gt=0,
        description="latency budget in ms (default: the server's query_budget_ms, at most "
        "max_query_budget_ms); a query that would miss it is refused with 429 + Retry-After",
    )


# -- upgrades and aliases -----------------------------------------------------------------------
class UpgradeIn(Strict):
    model: str = Field(description="the model of the new embedding space")
    auto_cutover: bool = Field(False, description="cut over by itself once the gate passes")
    eval: list[dict[str, Any]] | None = Field(
        None, description='labeled gate set: [{"query": ..., "document_id": ...}]'
    )
    gate: dict[str, Any] | None = Field(
        None, description="k, min_recall, max_recall_drop, min_overlap, sample_queries"
    )


class CutoverIn(Strict):
    eval: list[dict[str, Any]] | None = None
    gate: dict[str, Any] | None = None
    force: bool = Field(False, description="skip the gate")


class RetireIn(Strict):
    space_id: str | None = Field(None, description="default: the previous space")


class AliasIn(Strict):
    alias: str
    collection: str
