"""What the sync and async clients share, free of I/O: requests as `Call` values, the retry
policy, upload splitting and result parsing. `Client` and `AsyncClient` only send."""

from __future__ import annotations

import os
import random
import re
import struct
from base64 import b64decode, b64encode
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
import orjson
from pydantic import BaseModel

from embedstack.client.errors import error_from_response, retry_after
from embedstack.serving.responses import (
    EmbeddingsOut,
    JobOut,
    QueryOut,
    RejectedOut,
    SubmittedOut,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)

DEFAULT_URL = "http://127.0.0.1:8080"
# the server's defaults (src/embedstack/config.py); pass the server's own values if it differs
MAX_DOCUMENTS_PER_REQUEST = 1000
MAX_INPUTS_PER_EMBEDDING_REQUEST = 2048
# well under the server's 64 MiB max_body_bytes: smaller bodies cost nothing and bound memory
MAX_BODY_BYTES = 16 * 1024 * 1024
RETRY_STATUSES = frozenset({429, 502, 503, 504})


def seg(value: str) -> str:
    """One URL path segment: names and ids may hold spaces, '#', '?', '%'."""
    return quote(value, safe="")


@dataclass(frozen=True)
class Call(Generic[T]):
    """One request and how to read its answer. `retry`: may be re-sent on 429/503/5xx-gateway
    and on a connection that never got through."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    body: bytes | None = None
    ok: tuple[int, ...] = (200, 201, 202)
    retry: bool = True


def model_of(cls: type[M]) -> Callable[[httpx.Response], M]:
    def parse(r: httpx.Response) -> M:
        return cls.model_validate_json(r.content)

    return parse


def text_of(r: httpx.Response) -> str:
    return r.text


def _default(value: Any) -> Any:
    """What orjson leaves: array-likes (`tolist`) and number-likes (`__float__`)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "__float__"):
        return float(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """JSON; numpy arrays and scalars as lists and numbers (without importing numpy)."""
    return orjson.dumps(value, default=_default, option=orjson.OPT_SERIALIZE_NUMPY)


def json_body(payload: Mapping[str, Any]) -> bytes:
    """JSON without the None fields (the server's defaults apply)."""
    return dumps({k: v for k, v in payload.items() if v is not None})


def call(method: str, path: str, cls: type[M], payload: Mapping[str, Any] | None = None,
         ok: tuple[int, ...] = (200, 201, 202), retry: bool = True) -> Call[M]:  # fmt: skip
    body = json_body(payload) if payload is not None else None
    return Call(method, path, model_of(cls), body, ok, retry)


def check(c: Call[T], response: httpx.Response) -> T:
    if response.status_code not in c.ok:
        raise error_from_response(response)
    return c.parse(response)


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with full jitter; a `Retry-After` header is honoured as given (up to
    `max_delay`). `retries` re-sends at most, after the first try."""

    retries: int = 3
    backoff: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            wait = retry_after(response.headers)
            if wait is not None:
                return min(wait, self.max_delay)
        return min(self.max_delay, self.backoff * 2**attempt) * random.uniform(0.5, 1.0)

    def should_retry(self, c: Call[Any], attempt: int, status: int | None) -> bool:
        """`status` None: the connection failed before a request was sent."""
        if attempt >= self.retries:
            return False
        return status is None or (c.retry and status in RETRY_STATUSES)


@dataclass
class Settings:
    base_url: str
    headers: dict[str, str]
    timeout: httpx.Timeout
    retry: RetryPolicy
    max_documents: int
    max_inputs: int
    max_body_bytes: int


def settings(
    base_url: str | None, api_key: str | None, timeout: float | httpx.Timeout,
    retries: int, backoff: float, max_documents: int, max_inputs: int, max_body_bytes: int,
) -> Settings:  # fmt: skip
    url = (base_url or os.environ.get("EMBEDSTACK_URL") or DEFAULT_URL).rstrip("/")
    key = api_key if api_key is not None else os.environ.get("EMBEDSTACK_API_KEY")
    headers = {"user-agent": "embedstack-client/0.1.0", "accept": "application/json"}
    if key:
        headers["authorization"] = f"Bearer {key}"
    t = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout, connect=10.0)
    return Settings(url, headers, t, RetryPolicy(retries, backoff), max_documents, max_inputs,
                    max_body_bytes)  # fmt: skip


# -- uploads ----------------------------------------------------------------------------------
def document_dict(doc: Mapping[str, Any] | BaseModel) -> dict[str, Any]:
    if isinstance(doc, BaseModel):
        return doc.model_dump(exclude_none=True)
    return {k: v for k, v in doc.items() if v is not None}


def split_documents(
    docs: Iterable[Mapping[str, Any] | BaseModel],
    max_documents: int,
    max_body_bytes: int,
    kind: str = "documents",
) -> list[tuple[int, bytes]]:
    """Request bodies `{"documents": [...]}` (or `kind`: "records") holding at most
    `max_documents` items and at most `max_body_bytes` bytes each, in order: (items in it,
    body). A single item over the byte limit goes alone (the server answers 413 for it)."""
    head, tail = b'{"' + kind.encode() + b'":[', b"]}"
    out: list[tuple[int, bytes]] = []
    parts: list[bytes] = []
    size = len(head) + len(tail)
    for doc in docs:
        encoded = dumps(document_dict(doc))
        extra = len(encoded) + (1 if parts else 0)
        if parts and (len(parts) >= max_documents or size + extra > max_body_bytes):
            out.append((len(parts), head + b",".join(parts) + tail))
            parts, size = [], len(head) + len(tail)
            extra = len(encoded)
        parts.append(encoded)
        size += extra
    if parts:
        out.append((len(parts), head + b",".join(parts) + tail))
    return out


def split_texts(texts: Sequence[str], max_inputs: int, max_body_bytes: int) -> list[list[str]]:
    """Embedding inputs in slices under the server's count and body limits."""
    out: list[list[str]] = []
    cur: list[str] = []
    size = 64
    for t in texts:
        n = len(t.encode()) + 8  # quotes, comma, a little escaping
        if cur and (len(cur) >= max_inputs or size + n > max_body_bytes):
            out.append(cur)
            cur, size = [], 64
        cur.append(t)
        size += n
    if cur:
        out.append(cur)
    return out


def merge_embeddings(parts: Sequence[EmbeddingsOut]) -> EmbeddingsOut:
    """One answer from the answers of consecutive slices, indexes renumbered."""
    data, offset, tokens = [], 0, 0
    for p in parts:
        data += [d.model_copy(update={"index": d.index + offset}) for d in p.data]
        offset += len(p.data)
        tokens += p.usage.total_tokens
    usage = {"prompt_tokens": tokens, "total_tokens": tokens}
    return EmbeddingsOut.model_validate(
        {"object": "list", "data": data, "model": parts[0].model, "usage": usage}
    )


def vectors_of(out: EmbeddingsOut) -> list[list[float]]:
    """Float vectors in input order, whether the server sent floats or base64."""
    vecs: list[list[float]] = []
    for d in sorted(out.data, key=lambda d: d.index):
        if isinstance(d.embedding, str):
            raw = b64decode(d.embedding)
            vecs.append(list(struct.unpack(f"<{len(raw) // 4}f", raw)))
        else:
            vecs.append(list(d.embedding))
    return vecs


def embeddings_call(
    texts: list[str], model: str | None, encoding_format: str, dimensions: int | None
) -> Call[EmbeddingsOut]:
    payload = {"input": texts, "model": model, "encoding_format": encoding_format,
               "dimensions": dimensions}  # fmt: skip
    return call("POST", "/v1/embeddings", EmbeddingsOut, payload)


def query_call(
    collection: str, text: str | None, vector: Sequence[float] | None,
    params: Mapping[str, int] | None, **fields: Any,
) -> Call[QueryOut]:  # fmt: skip
    """POST /v1/collections/{name}/query; `fields`: the body's other keys (None: not sent)."""
    payload = {"text": text, "vector": list(vector) if vector is not None else None,
               "params": dict(params) if params is not None else None, **fields}  # fmt: skip
    return call("POST", f"/v1/collections/{seg(collection)}/query", QueryOut, payload)


# -- ingest progress ---------------------------------------------------------------------------
@dataclass
class Progress:
    """Where an `add_documents` call stands; handed to its `progress` callback after every
    request and every finished job."""

    documents: int
    submitted: int = 0
    unchanged: int = 0
    jobs: int = 0
    jobs_done: int = 0
    jobs_failed: int = 0

    @property
    def finished(self) -> bool:
        return self.submitted == self.documents and self.jobs_done + self.jobs_failed == self.jobs


@dataclass
class IngestResult:
    """What `add_documents` did: one submission (202) per request, and with `wait` each job's
    final state."""

    submitted: list[SubmittedOut] = field(default_factory=list)
    jobs: list[JobOut] = field(default_factory=list)

    @property
    def job_ids(self) -> list[str]:
        return [s.job_id for s in self.submitted]

    @property
    def documents(self) -> int:
        return sum(s.documents for s in self.submitted)

    @property
    def unchanged(self) -> int:
        return sum(s.unchanged for s in self.submitted)

    @property
    def rejected(self) -> int:
        """Records that did not become documents (`add_records`); `rejections` says why."""
        return sum(s.rejected for s in self.submitted)

    @property
    def rejections(self) -> list[RejectedOut]:
        """Each rejected record's position in its request and reason, from the jobs (`wait`)."""
        return [r for j in self.jobs for r in j.rejected]

    @property
    def failed(self) -> list[JobOut]:
        return [j for j in self.jobs if j.status == "failed"]


def note_submitted(
    result: IngestResult,
    state: Progress,
    submitted: SubmittedOut,
    progress: Callable[[Progress], None] | None,
) -> None:
    result.submitted.append(submitted)
    state.submitted += submitted.documents + submitted.rejected
    state.unchanged += submitted.unchanged
    state.jobs += 1
    if progress:
        progress(state)


def vectors_body(
    ids: Sequence[str],
    vectors: Any,
    texts: Sequence[str] | None,
    metadata: Sequence[Mapping[str, Any]] | None,
    space_id: str | None,
) -> bytes:
    """The body of POST vectors: the vectors as base64 of little-endian float32, row by row."""
    if hasattr(vectors, "astype"):  # a numpy array
        raw = vectors.astype("<f4").tobytes()
    else:
        floats = [float(x) for row in vectors for x in row]
        raw = struct.pack(f"<{len(floats)}f", *floats)
    metas = [dict(m) for m in metadata] if metadata is not None else None
    payload = {"ids": list(ids), "vectors": b64encode(raw).decode(), "space_id": space_id,
               "texts": list(texts) if texts is not None else None, "metadata": metas}  # fmt: skip
    return json_body(payload)


def documents_call(collection: str, body: bytes, kind: str = "documents") -> Call[SubmittedOut]:
    """POST documents (or `kind` "records", "vectors") of one body."""
    path = f"/v1/collections/{seg(collection)}/{kind}"
    return Call("POST", path, model_of(SubmittedOut), body, (202,))


def job_call(job_id: str) -> Call[JobOut]:
    return Call("GET", f"/v1/jobs/{seg(job_id)}", model_of(JobOut))


def next_poll(interval: float) -> float:
    return min(1.0, interval * 1.5)


FINAL_JOB = ("done", "failed")
# states in which an upgrade waits for nothing but a person (or has ended)
SETTLED_UPGRADE = ("ready", "gate_failed", "cut_over", "rolled_back", "cancelled", "failed")


def stats_of(text: str) -> dict[str, float]:
    """Prometheus exposition text -> `{"name{labels}": value}` (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def documents_of(body: bytes) -> tuple[str, list[dict[str, Any]]]:
    """A split body's kind ("documents" or "records") and its items."""
    parsed: dict[str, list[dict[str, Any]]] = orjson.loads(body)
    ((kind, items),) = parsed.items()
    return kind, items


# the server's answer to a request over EMBEDSTACK_MAX_DOCUMENTS_PER_REQUEST
# (serving/routes/documents.py; tests/integration/test_client.py holds the two together)
_OVER_COUNT = re.compile(r"^\d+ (?:documents|records), over the (\d+) limit")


def documents_limit(message: str) -> int | None:
    """The server's documents-per-request limit, from its refusal of a request over it."""
    m = _OVER_COUNT.match(message)
    return int(m.group(1)) if m else None


def halves(body: bytes) -> list[tuple[int, bytes]]:
    """A documents (or records) body cut in two bodies of half the items each."""
    kind, docs = documents_of(body)
    half = len(docs) // 2
    return [(len(p), orjson.dumps({kind: p})) for p in (docs[:half], docs[half:])]
