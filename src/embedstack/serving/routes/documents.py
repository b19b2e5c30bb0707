"""Documents: add (202 + job), job status, delete."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.errors import InvalidInput, NotFound, PayloadTooLarge, SpaceMismatch
from embedstack.ingest.chunking import content_hash
from embedstack.ingest.submit import submit_documents
from embedstack.serving.http import JSON
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.schemas import DocumentIn, DocumentsIn
from embedstack.serving.services import Services
from embedstack.storage.store import CollectionRecord, DocumentRow

router = APIRouter()

JOB_STATUS = {"queued": "queued", "leased": "running", "done": "done", "dead": "failed"}


def checked_vector(
    values: list[float], record: CollectionRecord, where: str, space_id: str | None
) -> np.ndarray:
    """A vector offered to a collection: right space and size, finite; unit length for cosine."""
    cfg = record.config
    if space_id is not None and space_id != record.space_id:
        raise SpaceMismatch(
            f"{where} is from space {space_id} but collection {record.name!r} is in space "
            f"{record.space_id}: vectors from different models or settings cannot be mixed"
        )
    if cfg.get("model") and space_id is None:
        raise SpaceMismatch(
            f"{where}: collection {record.name!r} embeds with model {cfg['model']!r} (space "
            f"{record.space_id}); send 'text', or send 'space_id' with the vector to assert it "
            "was made in that space"
        )
    if len(values) != int(cfg["dim"]):
        raise SpaceMismatch(
            f"{where} has {len(values)} dimensions but collection {record.name!r} holds "
            f"{cfg['dim']}-dim vectors ({cfg['metric']})"
        )
    vec = np.asarray(values, dtype=np.float32)
    if not np.all(np.isfinite(vec)):
        raise InvalidInput(f"{where} contains NaN or infinity: every component must be finite")
    if cfg["metric"] == "cosine":
        norm = float(np.linalg.norm(vec))
        if norm == 0.0:
            raise InvalidInput(f"{where} is all zeros: a cosine vector needs a direction")
        vec = vec / norm
    return vec


def _document_row(d: DocumentIn, i: int, record: CollectionRecord, max_chars: int) -> DocumentRow:
    where = f"documents[{i}] (id {d.id!r})"
    text = d.text or ""
    if len(text) > max_chars:
        raise PayloadTooLarge(
            f"{where} has {len(text)} characters, over the {max_chars} limit: split the document"
        )
    if record.config.get("model"):
        if d.vector is not None:
            raise InvalidInput(
                f"{where}: collection {record.name!r} embeds text with its model; "
                "send 'text' and no 'vector'"
            )
        if not text.strip():
            raise InvalidInput(f"{where} has empty text: every document needs some text")
        return DocumentRow(d.id, text, d.metadata, content_hash(text, d.metadata))
    if d.vector is None:
        raise InvalidInput(
            f"{where}: collection {record.name!r} has no model; send 'vector' "
            f"({record.config['dim']} numbers)"
        )
    vec = checked_vector(d.vector, record, where, d.space_id or record.space_id)
    blob = vec.tobytes()
    digest = hashlib.sha256(content_hash(text, d.metadata).encode() + blob).hexdigest()
    return DocumentRow(d.id, text, d.metadata, digest, vector=blob)


@router.post("/v1/collections/{name}/documents", status_code=202)
async def add_documents(
    name: str, body: DocumentsIn, services: Services = Depends(ready_services)
) -> Response:
    record = await asyncio.to_thread(services.collections.get, name)
    limit = services.settings.max_documents_per_request
    if not body.documents:
        raise InvalidInput("'documents' is empty: send at least one document")
    if len(body.documents) > limit:
        raise InvalidInput(f"{len(body.documents)} documents, over the {limit} limit: split them")
    seen: set[str] = set()
    rows = []
    for i, d in enumerate(body.documents):
        if d.id in seen:
            raise InvalidInput(f"document id {d.id!r} appears twice in one request")
        seen.add(d.id)
        rows.append(_document_row(d, i, record, services.settings.max_document_chars))
    done = await asyncio.to_thread(submit_documents, services.store, services.queue, name, rows)
    services.notify_workers()
    return JSON(
        {"job_id": done.job_id, "documents": done.documents, "unchanged": done.unchanged},
        status_code=202,
    )


@router.get("/v1/jobs/{job_id}")
async def get_job(job_id: str, services: Services = Depends(ready_services)) -> Response:
    job = await asyncio.to_thread(services.queue.get, job_id)
    status = JOB_STATUS.get(job.status, job.status)
    result: dict[str, Any] = dict(job.result or {})
    collection = str(job.payload.get("collection"))
    if status == "done" and result.get("seq", 0) > 0:
        # read-your-writes: "done" once the serving index holds what the job wrote
        try:
            applied = services.indexes.get(collection).applied_seq
        except NotFound:
            applied = int(result["seq"])
        if applied < int(result["seq"]):
            status = "running"
    return JSON(
        {
            "id": job.id,
            "status": status,
            "collection": collection,
            "documents": len(job.payload.get("documents", [])),
            "attempts": job.attempts,
            "result": result or None,
            "error": job.error,
            "created_at": job.created_at,
            "updated_at": job.updated_at,
        }
    )


@router.delete("/v1/collections/{name}/documents/{doc_id}")
async def delete_document(
    name: str, doc_id: str, services: Services = Depends(ready_services)
) -> Response:
    await asyncio.to_thread(services.collections.get, name)
    await asyncio.to_thread(services.store.delete_document, name, doc_id)
    await asyncio.to_thread(services.indexes.sync, name)
    return JSON({"deleted": doc_id, "collection": name})
