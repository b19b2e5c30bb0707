"""Documents: add (202 + job), job status, delete."""

from __future__ import annotations

import asyncio
import hashlib
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from embedstack.config import Settings
from embedstack.errors import InvalidInput, NotFound, PayloadTooLarge, SpaceMismatch
from embedstack.ingest.chunking import content_hash
from embedstack.ingest.records import Rejected
from embedstack.ingest.submit import job_rejections, submit_documents
from embedstack.serving import vector_bodies
from embedstack.serving.auth import Access, reading, writing
from embedstack.serving.http import JSON
from embedstack.serving.responses import DeletedOut, DocumentOut, JobOut, SubmittedOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.schemas import DocumentIn, DocumentsIn, VectorsMeta
from embedstack.serving.services import Services
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord, DocumentRow
from embedstack.vectors import unit_rows

router = APIRouter()

JOB_STATUS = {"queued": "queued", "leased": "running", "done": "done", "dead": "failed"}


def checked_vector(
    values: list[float], record: CollectionRecord, space: SpaceInfo, where: str, claimed: bool
) -> np.ndarray:
    """A vector offered to a space: claimed by its caller, right size, finite; unit for cosine.

    For a collection with a model the caller must name the space the vector was made in
    (`claimed`): a vector of the same size from another model would be silently wrong.
    """
    spec = space.model_spec
    dim = spec.dim if spec else record.config.dim
    metric = spec.metric if spec else record.config.metric
    if space.model and not claimed:
        raise SpaceMismatch(
            f"{where}: collection {record.name!r} embeds with model {space.model!r} (space "
            f"{space.space_id}); send 'text', or send 'space_id' with the vector to assert it "
            "was made in that space"
        )
    if len(values) != dim:
        raise SpaceMismatch(
            f"{where} has {len(values)} dimensions but space {space.space_id} of collection "
            f"{record.name!r} holds {dim}-dim vectors ({metric})"
        )
    vec = np.asarray(values, dtype=np.float32)
    # one pass: the sum of squares is finite iff every value is (unless it overflows)
    square = float(np.dot(vec, vec))
    if not math.isfinite(square) and not np.isfinite(vec).all():
        raise InvalidInput(f"{where} contains NaN or infinity: every component must be finite")
    if metric == "cosine":
        if square == 0.0 and not vec.any():
            raise InvalidInput(f"{where} is all zeros: a cosine vector needs a direction")
        vec = unit_rows(vec)
    return vec


def _depth(value: Any) -> int:
    """How deeply objects and lists nest in a JSON value (a scalar is 0), without recursion."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict | list):
            level += 1
            deepest = max(deepest, level)
            stack += [(v, level) for v in (item.values() if isinstance(item, dict) else item)]
    return deepest


def check_metadata(metadata: dict[str, Any], where: str, max_bytes: int, max_depth: int) -> None:
    """Metadata is parsed on every query hit: bound its nesting and its size."""
    if not metadata:  # {}: nothing to bound (most bulk vectors)
        return
    depth = _depth(metadata)
    if depth > max_depth:
        raise InvalidInput(
            f"{where}: metadata is nested {depth} levels deep, over the limit of {max_depth}: "
            "flatten it"
        )
    try:
        size = len(orjson.dumps(metadata))
    except orjson.JSONEncodeError as exc:
        raise InvalidInput(f"{where}: metadata is not storable as JSON: {exc}") from exc
    if size > max_bytes:
        raise InvalidInput(
            f"{where}: metadata is {size} bytes as JSON, over the limit of {max_bytes} bytes: "
            "keep large values in the text or elsewhere"
        )


def _check_bounds(text: str, metadata: dict[str, Any], where: str, settings: Settings) -> None:
    max_chars = settings.max_document_chars
    if len(text) > max_chars:
        raise PayloadTooLarge(
            f"{where} has {len(text)} characters, over the {max_chars} limit: split the document"
        )
    check_metadata(metadata, where, settings.max_metadata_bytes, settings.max_metadata_depth)


def text_row(
    doc_id: str, text: str, metadata: dict[str, Any], where: str, settings: Settings
) -> DocumentRow:
    """A text document for a collection with a model: bounded text and metadata, some text."""
    _check_bounds(text, metadata, where, settings)
    if not text.strip():
        raise InvalidInput(f"{where} has empty text: every document needs some text")
    return DocumentRow(doc_id, text, metadata, content_hash(text, metadata))


def _document_row(
    d: DocumentIn, i: int, record: CollectionRecord, space: SpaceInfo, settings: Settings
) -> DocumentRow:
    where = f"documents[{i}] (id {d.id!r})"
    text = d.text or ""
    if space.model:
        if d.vector is not None:
            raise InvalidInput(
                f"{where}: collection {record.name!r} embeds text with its model; "
                "send 'text' and no 'vector'"
            )
        return text_row(d.id, text, d.metadata, where, settings)
    _check_bounds(text, d.metadata, where, settings)
    if d.vector is None:
        raise InvalidInput(
            f"{where}: collection {record.name!r} has no model; send 'vector' "
            f"({record.config.dim} numbers)"
        )
    if d.space_id is not None and d.space_id != space.space_id:
        raise SpaceMismatch(
            f"{where} is from space {d.space_id} but collection {record.name!r} is in space "
            f"{space.space_id}: vectors from different spaces cannot be mixed"
        )
    vec = checked_vector(d.vector, record, space, where, claimed=True)
    blob = vec.tobytes()
    digest = hashlib.sha256(content_hash(text, d.metadata).encode() + blob).hexdigest()
    return DocumentRow(d.id, text, d.metadata, digest, vector=blob)


def check_count(n: int, limit: int, what: str, field: str | None = None) -> None:
    """A write request holds at least one and at most `limit` items (`what`: their plural,
    `field`: the body field that lists them, default `what`)."""
    if n == 0:
        raise InvalidInput(f"'{field or what}' is empty: send at least one {what[:-1]}")
    if n > limit:
        raise InvalidInput(f"{n} {what}, over the {limit} limit: split them")


async def accepted(
    services: Services,
    access: Access,
    collection: str,
    rows: list[DocumentRow],
    rejected: Sequence[Rejected] = (),
) -> Response:
    """Store the rows, enqueue their job (with the rejections), wake the workers: the 202."""
    done = await asyncio.to_thread(
        submit_documents, services.store, services.queue, collection, rows, rejected
    )
    services.notify_workers()
    access.note(documents=done.documents, unchanged=done.unchanged, job=done.job_id)
    body = {"job_id": done.job_id, "documents": done.documents, "unchanged": done.unchanged,
            "rejected": done.rejected}  # fmt: skip
    return JSON(body, status_code=202)


@router.post("/v1/collections/{name}/documents", status_code=202, response_model=SubmittedOut)
async def add_documents(
    name: str, body: DocumentsIn, services: Services = Depends(ready_services),
    access: Access = Depends(writing),
) -> Response:  # fmt: skip
    record = await access.resolve(name)
    check_count(len(body.documents), services.settings.max_documents_per_request, "documents")
    access.charge_texts(len(body.documents))
    space = services.collections.space(record)
    rows = document_rows(body.documents, record, space, services.settings)
    return await accepted(services, access, record.name, rows)


def document_rows(
    documents: list[DocumentIn], record: CollectionRecord, space: SpaceInfo, settings: Settings
) -> list[DocumentRow]:
    """The checked rows of a request's documents (an id twice in one request is refused)."""
    seen: set[str] = set()
    rows = []
    for i, d in enumerate(documents):
        if d.id in seen:
            raise InvalidInput(f"document id {d.id!r} appears twice in one request")
        seen.add(d.id)
        rows.append(_document_row(d, i, record, space, settings))
    return rows


@router.post(
    "/v1/collections/{name}/vectors",
    status_code=202,
    response_model=SubmittedOut,
    openapi_extra=vector_bodies.OPENAPI,
)
async def add_vectors(
    name: str, request: Request, services: Services = Depends(ready_services),
    access: Access = Depends(writing),
) -> Response:  # fmt: skip
    """Bring-your-own vectors in bulk: JSON with one base64 float32 string, or multipart with
    an .npy file part ('vectors', application/x-npy) and a JSON field ('meta': ids, texts,
    metadata, space_id); stored and acknowledged like POST documents (one job), checked a
    whole array at a time."""
    record = await access.resolve(name)
    body, data, fmt = await read_vector_upload(request, services.settings)
    access.charge_texts(len(body.ids))
    space = services.collections.space(record)
    rows = await asyncio.to_thread(vector_rows, body, data, fmt, record, space, services.settings)
    return await accepted(services, access, record.name, rows)


async def read_vector_upload(
    request: Request, settings: Settings
) -> tuple[VectorsMeta, bytes, str]:
    """A bulk vector upload's meta, undecoded vectors and their format, with the count checks
    (shared by single node and cluster API nodes)."""
    body, data, fmt = await vector_bodies.read_vectors(request, settings.max_body_bytes)
    n = len(body.ids)
    check_count(n, settings.max_vectors_per_request, "vectors", "ids")
    if len(set(body.ids)) != n:
        raise InvalidInput("'ids' repeats an id: each vector needs its own id")
    for field, values in (("texts", body.texts), ("metadata", body.metadata)):
        if values is not None and len(values) != n:
            raise InvalidInput(f"'{field}' has {len(values)} entries for {n} ids: send one per id")
    return body, data, fmt


def vector_rows(
    body: VectorsMeta, data: bytes, fmt: str, record: CollectionRecord, space: SpaceInfo,
    settings: Settings,
) -> list[DocumentRow]:  # fmt: skip
    """The rows of a bulk vector upload: the same checks and hashes as `_document_row`."""
    if space.model:
        raise InvalidInput(
            f"collection {record.name!r} embeds text with its model; bulk vectors are for "
            "collections without a model: POST documents with 'text'"
        )
    if body.space_id is not None and body.space_id != space.space_id:
        raise SpaceMismatch(
            f"the vectors are from space {body.space_id} but collection {record.name!r} is in "
            f"space {space.space_id}: vectors from different spaces cannot be mixed"
        )
    cfg = record.config
    where = f"collection {record.name!r}, {cfg.metric}"
    vecs = vector_bodies.decoded(data, fmt, len(body.ids), cfg.dim, cfg.metric, where)
    texts = body.texts or [""] * len(body.ids)
    metas = body.metadata or [{} for _ in body.ids]
    rows = []
    for i, (doc_id, text, meta, vec) in enumerate(zip(body.ids, texts, metas, vecs, strict=True)):
        where = f"vector {i} (id {doc_id!r})"
        if len(text) > settings.max_document_chars:
            raise PayloadTooLarge(f"{where}: its text is over {settings.max_document_chars} chars")
        check_metadata(meta, where, settings.max_metadata_bytes, settings.max_metadata_depth)
        blob = vec.tobytes()
        digest = hashlib.sha256(content_hash(text, meta).encode() + blob).hexdigest()
        rows.append(DocumentRow(doc_id, text, meta, digest, vector=blob))
    return rows


@router.get("/v1/jobs/{job_id}", response_model=JobOut)
async def get_job(
    job_id: str, services: Services = Depends(ready_services), access: Access = Depends(reading)
) -> Response:
    try:
        job = await asyncio.to_thread(services.queue.get, job_id)
    except NotFound:
        job = None
    collection = str(job.payload.get("collection")) if job is not None else ""
    if job is None or not access.owns(collection):  # another tenant's job does not exist here
        raise NotFound(f"job {job_id!r} does not exist")
    status = JOB_STATUS.get(job.status, job.status)
    result: dict[str, Any] = dict(job.result or {})
    # read-your-writes: "done" once the serving indexes hold what the job wrote
    seq = int(result.get("seq", 0))
    if status == "done" and seq > 0 and not services.indexes.caught_up(collection, seq):
        status = "running"
    return JSON(
        {
            "id": job.id,
            "status": status,
            "collection": access.display(collection),
            "documents": len(job.payload.get("documents", [])),
            "attempts": job.attempts,
            "result": result or None,
            "error": job.error,
            "rejected": job_rejections(job.payload),
            "created_at": job.created_at,
            "updated_at": job.updated_at,
        }
    )


@router.get("/v1/collections/{name}/documents/{doc_id}", response_model=DocumentOut)
async def get_document(
    name: str, doc_id: str, services: Services = Depends(ready_services),
    access: Access = Depends(reading),
) -> Response:  # fmt: skip
    """A stored document as it was last written (text and metadata)."""
    name = (await access.resolve(name)).name
    rows = await asyncio.to_thread(services.store.get_documents, name, [doc_id])
    if not rows:
        raise NotFound(f"collection {access.display(name)!r} has no document {doc_id!r}")
    row = rows[0]
    return JSON(
        {"id": row.id, "collection": access.display(name), "text": row.text,
         "metadata": row.metadata, "indexed": row.indexed_hash == row.content_hash}
    )  # fmt: skip


@router.delete("/v1/collections/{name}/documents/{doc_id}", response_model=DeletedOut)
async def delete_document(
    name: str, doc_id: str, services: Services = Depends(ready_services),
    access: Access = Depends(writing),
) -> Response:  # fmt: skip
    name = (await access.resolve(name)).name
    await asyncio.to_thread(services.store.delete_document, name, doc_id)
    await asyncio.to_thread(services.indexes.sync_collection, name)
    access.note(documents=1)
    return JSON({"deleted": doc_id, "collection": access.display(name)})
