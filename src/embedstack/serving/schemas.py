"""Request and response bodies of the HTTP API."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, field_validator
from pydantic_core import PydanticCustomError

MAX_JSON_DEPTH = 64  # objects and lists inside one free-form field (metadata, filter, ...)
INT64 = 1 << 63
MAX_ID_CHARS = 512  # a document id


def _clean(value: str) -> str:
    """Text must be encodable: a lone surrogate ("\\ud800") cannot be stored, tokenized or
    answered."""
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(
                f"text contains a lone surrogate (\\u{ord(value[exc.start]):04x} at position "
                f"{exc.start}): send valid Unicode"
            ) from None
    return value


def check_json(value: Any) -> Any:
    """A free-form JSON value every layer can store and compare: strings without lone
    surrogates, integers in the signed 64-bit range, finite numbers, bounded nesting."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            _clean(item)
        elif isinstance(item, bool) or item is None:
            continue
        elif isinstance(item, int):
            if not -INT64 <= item < INT64:
                raise ValueError(f"{path or 'value'}: integer {item} is outside the 64-bit range")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise ValueError(f"{path or 'value'}: {item} is not finite: send a finite number")
        elif isinstance(item, dict | list):
            if depth >= MAX_JSON_DEPTH:
                raise ValueError(f"{path or 'value'}: nested over {MAX_JSON_DEPTH} levels deep")
            if isinstance(item, dict):
                for key, v in item.items():
                    _clean(key)
                    stack.append((v, f"{path}.{key}" if path else str(key), depth + 1))
            else:
                stack += [(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item)]
    return value


Text = Annotated[str, AfterValidator(_clean)]
JSONObject = Annotated[dict[str, Any], AfterValidator(check_json)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- OpenAI-compatible embeddings ------------------------------------------------------------
class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients may send fields we don't use

    input: Text | list[Text]
    model: Text | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None

    @field_validator("input", mode="before")
    @classmethod
    def _no_token_ids(cls, value: object) -> object:
        """OpenAI clients may send token ids (LangChain's OpenAIEmbeddings does by default):
        ids of another tokenizer mean nothing to our models, so say how to send text."""
        items = value if isinstance(value, list) else [value]
        if any(isinstance(v, int | list) and not isinstance(v, bool) for v in items):
            raise PydanticCustomError("token_ids", TOKEN_IDS_REFUSED)
        return value


TOKEN_IDS_REFUSED = (
    "token ids are not accepted: embedstack tokenizes text with each model's own tokenizer, and "
    "ids from another one (e.g. tiktoken's) mean nothing to it; send strings. LangChain's "
    "OpenAIEmbeddings sends token ids unless created with check_embedding_ctx_length=False"
)


# -- collections --------------------------------------------------------------------------------
class ChunkingBody(Strict):
    mode: Literal["tokens", "sentences"] = "tokens"
    size: int | None = Field(None, description="tokens per chunk; default: 256 or the model limit")
    overlap: int | None = Field(None, description="tokens shared by neighbours; default: size/8")


class SearchBody(Strict):
    """Query defaults of a collection; a query's own fields override them."""

    mode: Literal["dense", "lexical", "hybrid"] | None = None
    fusion: Literal["rrf", "blend"] | None = None
    alpha: float | None = Field(None, ge=0, le=1, description="dense weight in the fusion")
    doc_scoring: Literal["max", "max_sum", "first_prior"] | None = None


class RecordBody(Strict):
    """How structured records (CSV, JSONL, Parquet rows, stream messages) become documents."""

    id: Text = Field(description="the field that is the document id")
    text: list[Text] = Field(description="the fields joined into the document text")
    metadata: list[Text] = Field(default_factory=list, description="fields kept as metadata")
    separator: str = Field("\n", description="what joins the text fields")


class CollectionCreate(Strict):
    name: Text = Field(description="1-64 letters, digits, '_', '-', '.'")
    model: Text | None = Field(None, description="embedding model; default: the bundled model")
    dim: int | None = Field(None, description="bring-your-own vectors: their dimension")
    metric: Literal["cosine", "ip", "l2"] | None = None
    chunking: ChunkingBody | None = None
    index: JSONObject | None = Field(
        None, description='e.g. {"type": "hnsw", "M": 32, "ef_construction": 200, "ef_search": 64}'
    )
    search: SearchBody | None = Field(None, description="query defaults (mode, fusion, ...)")
    lexical: StrictBool = Field(
        True,
        description="keep a lexical (FTS5 bm25) index for modes lexical and hybrid; false: "
        "dense only, a faster write path (fixed at creation)",
    )
    lexical_fields: list[Text] | None = Field(
        None, description='metadata keys indexed as the weighted title column; default ["title"]'
    )
    record: RecordBody | None = Field(
        None, description='record template, e.g. {"id": "sku", "text": ["title", "body"]}'
    )


class CollectionPatch(Strict):
    index: JSONObject | None = Field(
        None,
        description='new index settings, e.g. {"type": "hnsw", "M": 16}; built in the background',
    )
    search: SearchBody | None = Field(
        None, description='new query defaults, e.g. {"mode": "hybrid"}; null removes a key'
    )


# -- documents ----------------------------------------------------------------------------------
class DocumentIn(Strict):
    id: Text = Field(min_length=1, max_length=MAX_ID_CHARS)
    text: Text | None = None
    metadata: JSONObject = Field(default_factory=dict)
    vector: list[float] | None = None
    space_id: Text | None = None


class DocumentsIn(Strict):
    documents: list[DocumentIn]


class RecordsIn(Strict):
    """Structured records made documents by the collection's record template; a record that
    does not fit is rejected on its own (listed with the job), the others are accepted."""

    records: list[Annotated[Any, AfterValidator(check_json)]] = Field(
        description='JSON objects, e.g. [{"sku": "k1", "title": "Kettle", "price": 20}]'
    )


class VectorsMeta(Strict):
    """What comes with bulk vectors: an id per vector, optional texts and metadata (the 'meta'
    part of a multipart upload whose 'vectors' part is an .npy file)."""

    ids: list[Annotated[str, Field(min_length=1, max_length=512), AfterValidator(_clean)]]
    texts: list[Text] | None = Field(None, description="a text per id (default: none)")
    metadata: list[JSONObject] | None = Field(None, description="metadata per id (default: {})")
    space_id: Text | None = None


class VectorsIn(VectorsMeta):
    """Bring-your-own vectors in bulk: one base64 string of n x dim float32 values instead of n
    JSON lists (a fraction of the bytes, and no per-number parsing)."""

    vectors: str = Field(
        description="base64 of the n x dim vectors as little-endian float32, row after row "
        "(numpy: base64.b64encode(a.astype('<f4').tobytes()))"
    )


# -- feedback -------------------------------------------------------------------------------------
class FeedbackIn(Strict):
    query_id: Text = Field(description="the query_id of a query response")
    document_id: Text = Field(description="the document_id of one of that query's hits")
    kind: Literal["click", "grade"] = "click"
    grade: int | None = Field(None, ge=0, le=3, description="relevance, 0 (none) .. 3, for grade")


# -- query --------------------------------------------------------------------------------------
class QueryIn(Strict):
    text: Text | None = None
    vector: list[float] | None = None
    space_id: Text | None = None
    k: int = Field(10, ge=1)
    filter: JSONObject | None = None
    group_by: Literal["document"] | None = None
    ef_search: int | None = Field(
        None, ge=1, le=4096, description="HNSW candidate list size: shorthand for params.ef_search"
    )
    params: JSONObject | None = Field(
        None,
        description="search parameters of the collection's index for this query only, e.g. "
        '{"nprobe": 64, "refine_factor": 32} (ivf_pq); the search-time ("knob") params of its '
        "type: ef_search (hnsw, hnsw_sq8, binary), nprobe (ivf_flat, ivf_pq), refine_factor "
        "(ivf_pq with a refine store), rescore (binary), leaves_to_search and reorder (scann); "
        "integers in the param's range. Unknown keys or bad values are refused (422) naming "
        "the valid ones; exact, flat and sq8 indexes take none. Default: the index's own (as set "
        "or raised by its recall gate)",
    )
    budget_ms: float | None = Field(
        None,
        gt=0,
        description="latency budget in ms (default: the server's query_budget_ms, at most "
        "max_query_budget_ms); a query that would miss it is refused with 429 + Retry-After",
    )
    mode: Literal["dense", "lexical", "hybrid"] | None = Field(
        None, description="default: the collection's search.mode, else hybrid for text queries"
    )
    fusion: Literal["rrf", "blend"] | None = Field(None, description="hybrid: how lists merge")
    alpha: float | None = Field(None, ge=0, le=1, description="hybrid: weight of dense (0.5)")
    doc_scoring: Literal["max", "max_sum", "first_prior"] | None = Field(
        None, description="group_by document: how chunk scores make a document's score"
    )


# -- upgrades and aliases -----------------------------------------------------------------------
class UpgradeIn(Strict):
    model: Text = Field(description="the model of the new embedding space")
    auto_cutover: bool = Field(False, description="cut over by itself once the gate passes")
    eval: list[JSONObject] | None = Field(
        None, description='labeled gate set: [{"query": ..., "document_id": ...}]'
    )
    gate: JSONObject | None = Field(
        None, description="k, min_recall, max_recall_drop, min_overlap, sample_queries"
    )


class CutoverIn(Strict):
    eval: list[JSONObject] | None = None
    gate: JSONObject | None = None
    force: bool = Field(False, description="skip the gate")


class RetireIn(Strict):
    space_id: Text | None = Field(None, description="default: the previous space")


class AliasIn(Strict):
    alias: Text
    collection: Text
