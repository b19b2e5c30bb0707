"""The HTTP API of an API node in cluster mode (`embedstack serve --cluster`).

The same request bodies, response models and error table as single node for the routes cluster
mode serves: create / list / get / delete a collection, add documents (202 once the log has
them), job status, delete a document, dense query (with filter and group_by), aliases (set,
list, delete: resolved in the shared catalog), model upgrades (start, status, cutover,
rollback, retire). Every other single-node route answers 501 naming cluster mode, never 404.
Stateless: the catalog is in Redis, the data in the shard replicas, so any number of API nodes
can run side by side."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.keys import RedisKeys
from embedstack.cluster.router import ClusterRouter
from embedstack.cluster.upgrades import ClusterUpgrades
from embedstack.config import Settings
from embedstack.errors import InvalidInput, NotFound, NotSupported, Unavailable
from embedstack.registry.collections import NAME_RE, describe_config
from embedstack.serving.app import ROUTE_MODULES, install_error_handlers
from embedstack.serving.cluster_auth import ClusterGate, key_routes
from embedstack.serving.cluster_upgrades import upgrade_routes
from embedstack.serving.http import JSON
from embedstack.serving.responses import (
    AliasesOut,
    AliasOut,
    CollectionOut,
    DeletedOut,
    DocumentOut,
    JobOut,
    ModelsOut,
    QueryOut,
    SubmittedOut,
)
from embedstack.serving.routes.admin import models_list
from embedstack.serving.routes.documents import _document_row, checked_vector
from embedstack.serving.schemas import AliasIn, CollectionCreate, DocumentsIn, QueryIn
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord

DELETE_WAIT_S = 30.0  # a document delete answers once every replica applied it, or 503


class ClusterCollectionOut(CollectionOut):
    """A single node's collection description, summed over one caught-up replica per shard,
    plus the cluster layout."""

    shards: int
    replicas: int
    topic: str


class ClusterCollectionsOut(BaseModel):
    collections: list[ClusterCollectionOut]


class ClusterHealthOut(BaseModel):
    status: str
    nodes: list[str]


def _out(router: ClusterRouter, c: ClusterCollection) -> dict[str, Any]:
    """The single-node description (describe_config + counts) of a cluster collection: the
    counts of each shard from its placed live replica that has read the most of the log."""
    out = describe_config(CollectionRecord(c.name, c.config, c.space_id, c.created_at))
    counts = {"documents": 0, "documents_pending": 0, "chunks": 0}
    vectors: dict[str, int] = {}
    for states in router.replica_states(c).values():
        if not states:
            continue
        stats = max(states, key=lambda r: r.position).stats
        for key in ("documents", "documents_pending"):
            counts[key] += int(stats.get(key, 0))
        # the catalog's serving space (a replica's store learns of a cutover from the log)
        counts["chunks"] += int(stats.get("chunks_by_space", {}).get(c.space_id, 0))
        for space, n in stats.get("vectors", {}).items():
            vectors[space] = vectors.get(space, 0) + int(n)
    out.update(counts)
    out.update(
        model=c.model,
        vectors=vectors.get(c.space_id),
        index_memory_bytes=None,
        rebuilding=False,
        state="ready",
        error=None,
        last_rebuild_error=None,
        shards=c.shards,
        replicas=c.replicas,
        topic=c.topic,
    )
    for label, ref in (("shadow", c.shadow), ("previous", c.previous)):
        if ref is not None:
            out[label] = {
                "space_id": ref.space_id,
                "model": ref.model,
                "vectors": vectors.get(ref.space_id),
                "index_memory_bytes": None,
            }
    return out


def _record(
    router: ClusterRouter, c: ClusterCollection, space_id: str | None = None
) -> tuple[CollectionRecord, SpaceInfo]:
    """The single-node view of a cluster collection and one of its spaces (default: the serving
    one), for the shared input checks."""
    record = CollectionRecord(c.name, c.config, c.space_id, c.created_at)
    space, model = router.space_of(c, space_id)
    spec = router.models.get(model).spec if model else None
    return record, SpaceInfo(c.name, space, model, spec, "serving", 0.0)


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

    @api.get("/v1/models", response_model=ModelsOut)
    async def list_models() -> Response:
        """The models this API node embeds queries with (replicas load the same ones)."""
        return JSON(models_list(router.models))

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
        return JSON(_out(router, coll), status_code=201)

    @api.get("/v1/collections", response_model=ClusterCollectionsOut)
    async def list_collections() -> Response:
        rows = await asyncio.to_thread(router.catalog.list)
        return JSON({"collections": [_out(router, c) for c in rows]})

    @api.get("/v1/collections/{name}", response_model=ClusterCollectionOut)
    async def get_collection(name: str) -> Response:
        return JSON(_out(router, await asyncio.to_thread(router.catalog.resolve, name)))

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

    @api.get("/v1/aliases", response_model=AliasesOut)
    async def list_aliases() -> Response:
        return JSON({"aliases": await asyncio.to_thread(router.catalog.aliases)})

    @api.delete("/v1/aliases/{alias}", response_model=DeletedOut)
    async def delete_alias(alias: str) -> Response:
        await asyncio.to_thread(router.catalog.delete_alias, alias)
        return JSON({"deleted": alias})

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
        record, space = _record(router, coll)
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

    @api.get("/v1/collections/{name}/documents/{doc_id}", response_model=DocumentOut)
    async def get_document(name: str, doc_id: str) -> Response:
        """A stored document as it was last written, from a replica of its shard."""
        coll = await asyncio.to_thread(router.catalog.resolve, name)
        row = await asyncio.to_thread(router.get_document, coll, doc_id)
        if row is None:
            raise NotFound(f"collection {coll.name!r} has no document {doc_id!r}")
        return JSON({**row, "collection": coll.name})

    @api.delete("/v1/collections/{name}/documents/{doc_id}", response_model=DeletedOut)
    async def delete_document(name: str, doc_id: str) -> Response:
        """As on single node: 200 once the document is gone from every placed replica of its
        shard (the delete goes through the log); 404 when it does not exist."""
        coll = await asyncio.to_thread(router.catalog.resolve, name)
        if await asyncio.to_thread(router.get_document, coll, doc_id) is None:
            raise NotFound(f"document {doc_id!r} does not exist in collection {coll.name!r}")
        job_id = await asyncio.to_thread(router.delete_document, coll.name, doc_id)
        if not await asyncio.to_thread(router.wait_job, job_id, DELETE_WAIT_S):
            raise Unavailable(
                f"the delete of {doc_id!r} is in the log (job {job_id}) but not yet applied by "
                f"every replica after {DELETE_WAIT_S:g} s: follow GET /v1/jobs/{job_id}"
            )
        return JSON({"deleted": doc_id})

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
        # the space this query reads, resolved once: a cutover meanwhile cannot mix spaces
        space_id, _ = router.space_of(coll, body.space_id)
        if body.vector is not None:
            record, space = _record(router, coll, space_id)
            claimed = body.space_id is not None
            vector = checked_vector(body.vector, record, space, "'vector'", claimed)
        else:
            vector = await asyncio.to_thread(router.embed_query, coll, str(body.text), space_id)
        hits = await asyncio.to_thread(
            router.search, coll, space_id, vector, body.k, body.filter, body.group_by == "document"
        )
        took = (time.perf_counter() - started) * 1000
        return JSON(
            {
                "hits": hits,
                "collection": coll.name,
                "space_id": space_id,
                "mode": "dense",
                "took_ms": took,
                "budget_ms": settings.cluster_replica_timeout_s * 1000,
            }
        )

    return api


def unsupported_routes(served: set[tuple[str, str]]) -> APIRouter:
    """A 501 for every single-node route (path, method) an API node does not serve, with the
    single-node response model declared: a client gets a clear answer, never a 404."""
    api = APIRouter()
    for module in ROUTE_MODULES:
        for route in module.router.routes:
            if not isinstance(route, APIRoute):
                continue
            for method in sorted((route.methods or set()) - {"HEAD"}):
                if (route.path, method) in served:
                    continue
                api.add_api_route(
                    route.path,
                    _not_in_cluster(method, route.path),
                    methods=[method],
                    response_model=route.response_model,
                    response_class=route.response_class,
                    status_code=route.status_code,
                    include_in_schema=route.include_in_schema,
                    summary=f"{route.summary or route.name} (single node only)",
                )
    return api


def _not_in_cluster(method: str, path: str) -> Callable[[], Awaitable[Response]]:
    async def refuse() -> Response:
        raise NotSupported(
            f"{method} {path} is not served in cluster mode (embedstack serve --cluster): "
            "use a single-node server for it; see the README's cluster section for what a "
            "cluster API node serves"
        )

    return refuse


def create_cluster_app(
    router: ClusterRouter, settings: Settings, keys: RedisKeys | None = None
) -> FastAPI:
    """The API node's app; `keys`: where API keys are checked (default: the catalog's Redis).
    Every request needs a key unless settings.insecure_no_auth."""
    app = FastAPI(
        title="embedstack (cluster)",
        version="0.1.0",
        default_response_class=JSON,
        description="An API node of an embedstack cluster: shards on Ray, the log on Kafka.",
    )
    errors = install_error_handlers(app)
    cluster_upgrades = ClusterUpgrades(router)
    router.on_round.append(cluster_upgrades.tick)  # auto cutovers
    keys = keys if keys is not None else router.catalog.keys()
    served = [cluster_routes(router, settings), upgrade_routes(cluster_upgrades), key_routes(keys)]
    for api in served:
        app.include_router(api, responses=errors)
    paths = {
        (r.path, m)
        for api in served
        for r in api.routes
        if isinstance(r, APIRoute)
        for m in r.methods or ()
    }
    app.include_router(unsupported_routes(paths), responses=errors)
    app.add_middleware(ClusterGate, keys=keys, settings=settings)
    return app
