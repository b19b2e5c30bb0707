"""Response bodies of the HTTP API, declared on every route so /openapi.json documents what
comes back. Routes still render with orjson (serving/http.py: JSON): these models document and
are checked by tests, they are not run on the hot paths."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    type: str = Field(description="the error kind, e.g. InvalidInput, NotFound, Overloaded")
    message: str = Field(description="what went wrong and what to fix")


class ErrorOut(BaseModel):
    error: ErrorDetail


# -- admin ----------------------------------------------------------------------------------------
class HealthOut(BaseModel):
    status: Literal["ok"]


class ReadyOut(BaseModel):
    ready: bool
    models_loaded: list[str]
    backends: dict[str, str] = Field(description="the engine serving each loaded model")
    indexes: list[str] = Field(description="open indexes as collection/space_id")
    collections_failed: dict[str, str] = Field(
        default_factory=dict, description="collections whose indexes did not open, and why"
    )
    problems: list[str] = Field(
        default_factory=list,
        description="why the node is not ready (503): a dead worker or batcher, stuck upkeep",
    )


class ModelOut(BaseModel):
    id: str
    object: Literal["model"]
    owned_by: str
    dim: int | None = None
    metric: str | None = None
    max_tokens: int | None = None
    space_id: str | None = None
    backend: str | None = None


class ModelsOut(BaseModel):
    object: Literal["list"]
    data: list[ModelOut]


# -- embeddings -----------------------------------------------------------------------------------
class EmbeddingOut(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class Usage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsOut(BaseModel):
    object: Literal["list"]
    data: list[EmbeddingOut]
    model: str
    usage: Usage


# -- collections ----------------------------------------------------------------------------------
class SpaceOut(BaseModel):
    space_id: str
    model: str | None
    vectors: int | None = None
    index_memory_bytes: int | None = None


class CollectionOut(BaseModel):
    name: str
    model: str | None
    space_id: str
    shadow: SpaceOut | None = Field(description="the space being back-filled by an upgrade")
    previous: SpaceOut | None = Field(description="the space kept for rollback")
    dim: int
    metric: str
    chunking: dict[str, Any] | None
    index: dict[str, Any]
    search: dict[str, Any] | None = Field(None, description="query defaults in effect")
    lexical: bool = Field(True, description="whether the collection has a lexical index")
    lexical_fields: list[str] = Field(
        default_factory=list, description="metadata keys indexed as the lexical title column"
    )
    record: dict[str, Any] | None = Field(None, description="the record template, if any")
    created_at: float
    documents: int
    documents_pending: int
    chunks: int
    vectors: int | None = None
    index_memory_bytes: int | None = None
    rebuilding: bool | None = Field(None, description="a new index is being built aside")
    state: Literal["ready", "error"] = Field(
        "ready", description="error: its indexes did not open (see 'error'); the rest serve"
    )
    error: str | None = Field(None, description="why the collection's indexes did not open")
    last_rebuild_error: str | None = Field(
        None, description="why the last index rebuild failed (the old index kept serving)"
    )


class CollectionsOut(BaseModel):
    collections: list[CollectionOut]


class DeletedOut(BaseModel):
    deleted: str
    collection: str | None = None


# -- documents and jobs ---------------------------------------------------------------------------
class SubmittedOut(BaseModel):
    job_id: str
    documents: int
    unchanged: int
    rejected: int = Field(0, description="records that did not become documents (see the job)")


class RejectedOut(BaseModel):
    where: str = Field(
        description="which input: records[i] (0-based in its request, with its id when it has "
        "one), or a file:line of `embedstack ingest`"
    )
    reason: str = Field(description="what is missing or wrong, and what to fix")


class DocumentOut(BaseModel):
    id: str
    collection: str
    text: str
    metadata: dict[str, Any]
    indexed: bool = Field(description="the index serves this version of the document")


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "done", "failed"]
    collection: str
    documents: int
    attempts: int
    result: dict[str, Any] | None
    error: str | None
    rejected: list[RejectedOut] = Field(
        default_factory=list,
        description="inputs of this job's submission that did not become documents, and why "
        "(kept with the job from the moment it was acknowledged)",
    )
    created_at: float
    updated_at: float


# -- query ----------------------------------------------------------------------------------------
class HitOut(BaseModel):
    document_id: str
    chunk_id: str
    score: float
    text: str
    metadata: dict[str, Any]


class QueryOut(BaseModel):
    hits: list[HitOut]
    collection: str
    space_id: str
    mode: str | None = Field(None, description="dense, lexical or hybrid: the mode that ran")
    took_ms: float
    budget_ms: float = Field(description="the latency budget the query was admitted under")
    query_id: str = Field(description="send it to POST /v1/feedback with a click or a grade")


# -- quality --------------------------------------------------------------------------------------
class FeedbackOut(BaseModel):
    query_id: str
    document_id: str
    rank: int = Field(
        description="1-based rank of the document among the query's distinct hit documents"
    )
    recorded: Literal["click", "grade"]


class SpaceStatsOut(BaseModel):
    space_id: str
    active: bool = Field(description="whether the collection serves queries from this space")
    vectors: int
    index_bytes: int
    index_type: str
    drift: dict[str, Any] | None = Field(
        description="state (collecting baseline, collecting window, ok, drift), alert, PSI and "
        "KS per signal (top1_score, centroid_cosine, norm), sample sizes; null when off"
    )
    recall: dict[str, Any] = Field(
        description="online recall@k estimate with its 95% interval, the floor, knobs in "
        "effect and the re-tunes done when it fell under the floor"
    )
    feedback: dict[str, Any] | None = Field(
        description="remembered queries, clicked, click_through@k, clicked_mrr; null when off"
    )


class StatsOut(BaseModel):
    collection: str
    spaces: list[SpaceStatsOut]


class BaselineOut(BaseModel):
    collection: str
    space_id: str
    baseline_queries: int = Field(description="the next this many queries form the baseline")


# -- upgrades and aliases -------------------------------------------------------------------------
class UpgradeOut(BaseModel):
    id: str
    collection: str
    state: str
    model: str
    from_space: str
    to_space: str
    total: int
    done: int
    rate_docs_per_s: float
    eta_s: float | None
    auto_cutover: bool
    report: dict[str, Any] | None
    error: str | None
    started_at: float
    updated_at: float


class RollbackOut(BaseModel):
    collection: str
    space_id: str


class RetireOut(BaseModel):
    collection: str
    retired: str


class AliasOut(BaseModel):
    alias: str
    collection: str


class AliasesOut(BaseModel):
    aliases: dict[str, str]


# -- access (serving/routes/keys.py) ----------------------------------------------------------
class KeyOut(BaseModel):
    prefix: str
    tenant: str
    scopes: list[str]
    collections: list[str] | None
    rate_rps: float | None
    rate_texts: float | None
    name: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    active: bool


class KeyCreatedOut(KeyOut):
    key: str = Field(description="the full key: shown only in this answer")


class KeysOut(BaseModel):
    keys: list[KeyOut]


class AuditEntryOut(BaseModel):
    id: int
    at: float
    key: str | None
    tenant: str | None
    action: str
    collection: str | None
    status: int | None
    detail: dict[str, object]


class AuditOut(BaseModel):
    entries: list[AuditEntryOut]


# -- metrics history (serving/routes/dashboard.py) ------------------------------------------------
class HistorySampleOut(BaseModel):
    t: float = Field(description="unix time of the sample")
    values: dict[str, float] = Field(
        description='"panel|series" -> value, e.g. "latency_ms|p99", "qps|429", '
        '"drift_psi|docs/<space>/top1"; a series the server does not export has no key'
    )


class HistoryOut(BaseModel):
    interval_s: float = Field(description="seconds between samples")
    window_s: float = Field(description="how far back samples are kept")
    samples: list[HistorySampleOut] = Field(description="oldest first")
