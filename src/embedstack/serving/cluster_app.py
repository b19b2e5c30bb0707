"""The HTTP API of an API node in cluster mode (`embedstack serve --cluster`).

The same request bodies, response models and error table as single node for the routes cluster
mode serves: create / list / get a collection, add documents (202 once the log has them), job
status, delete a document, dense query (with filter and group_by). Stateless: the catalog is in
Redis, the data in the shard replicas, so any number of API nodes can run side by side.
Aliases can be set (a query or write through the alias resolves in the shared catalog)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from starlette.responses import Response

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.router import ClusterRouter
from embedstack.config import Settings
from embedstack.errors import InvalidInput
from embedstack.registry.collections import NAME_RE
from embedstack.serving.app import install_error_handlers
from embedstack.serving.http import JSON
from embedstack.serving.responses import AliasOut, DeletedOut, JobOut, QueryOut, SubmittedOut
from embedstack.serving.routes.documents import _document_row, checked_vector
from embedstack.serving.schemas import AliasIn, CollectionCreate, DocumentsIn, QueryIn
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord


class ClusterCollectionOut(BaseModel):
    name: str
    model: str | None
    space_id: str
    dim: int
    metric: str
    shards: int
    replicas: int
    topic: str
    created_at: float


class ClusterCollectionsOut(BaseModel):
    collections: list[ClusterCollectionOut]


class ClusterHealthOut(BaseModel):
    status: str
    nodes: list[str]


def _out(c: ClusterCollection) -> dict[str, Any]:
    return {
        "name": c.name,
        "model": c.config.model,
        "space_id": c.space_id,
        "dim": c.config.dim,
        "metric": c.config.metric,
        "shards": c.shards,
        "replicas": c.replicas,
        "topic": c.topic,
        "created_at": c.created_at,
    }


def _record(c: ClusterCollection) -> tuple[CollectionRecord, SpaceInfo]:
    """The single-node view of a cluster collection, for the shared input checks."""
    record = CollectionRecord(c.name, c.config, c.space_id, c.created_at)
    space = SpaceInfo(c.name, c.space_id, c.config.model, c.config.model_spec, "serving", 0.0)
    return record, space


def cluster_routes(router: ClusterRouter, settings: Settings) -> APIRouter:
    api = APIRouter()

    @api.get("/healthz", response_model=ClusterHealthOut)
    async def healthz() -> Response:
        view = await asyncio.to_thread(router.refresh)
        return JSON({"status": "ok" if view.live else "no nodes", "nodes": view.live})

    @api.get("/readyz", response_model=ClusterHealthOut)
    async def readyz() -> Response:
        """Ready once a shard node answers; 503 while none does."""
        view = await asyncio.to_thread(router.refresh)
        body = {"status": "ready" if view.live else "no nodes", "nodes": view.live}
        return JSON(body, status_code=200 if view.live else 503)

    @api.post("/v1/collections", status_code=201, response_model=ClusterCollectionOut)
    async def create_collection(body: CollectionCreate) -> Response:
        coll = await asyncio.to_thread(
            router.create_collection,
            body.name,
            shards=settings.cluster_shards,
            replicas=settings.cluster_replicas,
            model=body.model,
            dim=body.dim,
            metric=body.metric,
            chunking=body.chunking.model_dump() if body.chunking else None,
            index=body.index,
            search=body.search.model_dump(exclude_none=True) if body.search else None,
        )
        return JSON(_out(coll), status_code=201)

    @api.get("/v1/collections", response_model=ClusterCollectionsOut)
    async def list_collections() -> Response:
        rows = await asyncio.to_thread(router.catalog.list)
        return JSON({"collections": [_out(c) for c in rows]})

    @api.get("/v1/collections/{name}", response_model=ClusterCollectionOut)
    async def get_collection(name: str) -> Response:
        return JSON(_out(await asyncio.to_thread(router.catalog.resolve, name)))

    @api.delete("/v1/collections/{name}", response_model=DeletedOut)
    async def delete_collection(name: str) -> Response:
        """Remove the collection from the catalog, its replicas from the nodes, its log topic."""
        await asyncio.to_thread(router.delete_collection, name)
        return JSON({"deleted": name})

    @api.post("/v1/aliases", response_model=AliasOut)
    async def set_alias(body: AliasIn) -> Response:
        """Point an alias at a collection (atomically, for every API node)."""
        if not NAME_RE.match(body.alias):
            raise InvalidInput(
                f"alias {body.alias!r} is not valid: use the rules of collection names"
            )
        await asyncio.to_thread(router.catalog.set_alias, body.alias, body.collection)
        return JSON({"alias": body.alias, "collection": body.collection})

    @api.post("/v1/collections/{name}/documents", status_code=202, response_model=SubmittedOut)
    async def add_documents(name: str, body: DocumentsIn) -> Response:
        coll = await asyncio.to_thread(router.catalog.resolve, name)
        if not body.documents:
            raise InvalidInput("'documents' is empty: send at least one document")
        limit = settings.max_documents_per_request
        if len(body.documents) > limit:
            raise InvalidInput(
                f"{len(body.documents)} documents, over the {limit} limit: split them"
            )
        record, space = _record(coll)
        seen: set[str] = set()
        rows = []
        for i, d in enumerate(body.documents):
            if d.id in seen:
                raise InvalidInput(f"document id {d.id!r} appears twice in one request")
            seen.add(d.id)
            rows.append(_document_row(d, i, record, space, settings))
        job_id = await asyncio.to_thread(router.put_documents, coll.name, rows)
        body_out = {"job_id": job_id, "documents": len(rows), "unchanged": 0}
        return JSON(body_out, status_code=202)

    @api.delete(
        "/v1/collections/{name}/documents/{doc_id}", status_code=202, response_model=SubmittedOut
    )
    async def delete_document(name: str, doc_id: str) -> Response:
        job_id = await asyncio.to_thread(router.delete_document, name, doc_id)
        return JSON({"job_id": job_id, "documents": 1, "unchanged": 0}, status_code=202)

    @api.get("/v1/jobs/{job_id}", response_model=JobOut)
    async def get_job(job_id: str) -> Response:
        job = await asyncio.to_thread(router.job, job_id)
        now = time.time()
        return JSON(
            {
                "id": job_id,
                "status": job["status"],
                "collection": job["collection"],
                "documents": job["documents"],
                "attempts": 1,
                "result": {"shards": {str(k): v for k, v in job["shards"].items()}},
                "error": None,
                "created_at": job["created_at"],
                "updated_at": now,
            }
        )

    @api.post("/v1/collections/{name}/query", response_model=QueryOut)
    async def query(name: str, body: QueryIn) -> Response:
        started = time.perf_counter()
        coll = await asyncio.to_thread(router.catalog.resolve, name)
        if body.mode not in (None, "dense"):
            raise InvalidInput(
                f"cluster mode serves dense queries; send mode 'dense' (not {body.mode!r})"
            )
        if (body.text is None) == (body.vector is None):
            raise InvalidInput("send exactly one of 'text' and 'vector'")
        vector = None
        if body.vector is not None:
            record, space = _record(coll)
            claimed = body.space_id is not None
            if claimed and body.space_id != coll.space_id:
                raise InvalidInput(f"space {body.space_id} is not collection {name!r}'s space")
            vector = checked_vector(body.vector, record, space, "'vector'", claimed)
        hits = await asyncio.to_thread(
            router.query,
            coll.name,
            text=body.text,
            vector=vector,
            k=body.k,
            flt=body.filter,
            group=body.group_by == "document",
        )
        took = (time.perf_counter() - started) * 1000
        return JSON(
            {
                "hits": hits,
                "collection": coll.name,
                "space_id": coll.space_id,
                "mode": "dense",
                "took_ms": took,
                "budget_ms": settings.cluster_replica_timeout_s * 1000,
            }
        )

    return api


def create_cluster_app(router: ClusterRouter, settings: Settings) -> FastAPI:
    app = FastAPI(
        title="embedstack (cluster)",
        version="0.1.0",
        default_response_class=JSON,
        description="An API node of an embedstack cluster: shards on Ray, the log on Kafka.",
    )
    errors = install_error_handlers(app)
    app.include_router(cluster_routes(router, settings), responses=errors)
    return app
