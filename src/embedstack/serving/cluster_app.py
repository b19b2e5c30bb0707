"""The HTTP API of an API node in cluster mode (`embedstack serve --cluster`).

The same request bodies, response models and error table as single node for the routes cluster
mode serves: create / list / get / delete a collection, add documents (202 once the log has
them), job status, delete a document, query (dense, lexical, hybrid; filter, group_by; with a
query_id), aliases (set, list, delete: resolved in the shared catalog), model upgrades (start,
status, cutover, rollback, retire), API keys; bulk vectors, records, PATCH of a collection and
/v1/embeddings (cluster_writes.py); and observability (serving/cluster_obs.py): /metrics,
collection stats, the drift baseline, feedback, the metrics history and dashboard, and the audit
log. Every other single-node route answers 501 naming cluster mode, never 404.
Stateless: the catalog is in Redis, the data in the shard replicas, so any number of API nodes
can run side by side."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.responses import Response

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.keys import RedisKeys
from embedstack.cluster.router import ClusterRouter
from embedstack.cluster.upgrades import ClusterUpgrades
from embedstack.config import Settings
from embedstack.errors import InvalidInput, NotFound, NotSupported, Unavailable
from embedstack.registry.collections import check_name, describe_config
from embedstack.serving.app import ROUTE_MODULES, BodyLimit, install_error_handlers
from embedstack.serving.auth import Principal
from embedstack.serving.cluster_auth import (
    ClusterAccess,
    ClusterGate,
    access_of,
    alias_routes,
    key_routes,
)
from embedstack.serving.cluster_inference import ServeQueryEmbedder
from embedstack.serving.cluster_obs import ClusterObs
from embedstack.serving.cluster_upgrades import upgrade_routes
from embedstack.serving.cluster_writes import write_routes
from embedstack.serving.http import JSON
from embedstack.serving.limits import RateLimiter, check_filter
from embedstack.serving.responses import (
    CollectionOut,
    DeletedOut,
    DocumentOut,
    JobOut,
    ModelsOut,
    QueryOut,
    SubmittedOut,
)
from embedstack.serving.routes.admin import models_list
from embedstack.serving.routes.documents import _document_row
from embedstack.serving.routes.query import query_inputs, retrieval, search_knobs
from embedstack.serving.schemas import CollectionCreate, DocumentsIn, QueryIn
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


def _out(router: ClusterRouter, c: ClusterCollection, caller: Principal) -> dict[str, Any]:
    """The single-node description (describe_config + counts) of a cluster collection, named as
    the caller's tenant sees it: the counts of each shard from its placed live replica that has
    read the most of the log."""
    out = describe_config(CollectionRecord(c.name, c.config, c.space_id, c.created_at))
    counts = {"documents": 0, "documents_pending": 0, "chunks": 0}
    vectors: dict[str, int] = {}
    rebuild_error = None
    for states in router.replica_states(c).values():
        rebuild_error = next((r.stats["rebuild_error"] for r in states
                              if r.stats.get("rebuild_error")), rebuild_error)  # fmt: skip
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
        rebuilding=router.settings_pending(c),  # a PATCH not yet applied by every replica
        state="ready",
        error=None,
        last_rebuild_error=rebuild_error,
        shards=c.shards,
        replicas=c.replicas,
        topic=c.topic,
        name=caller.display(c.name),
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
    return router.single_node_view(c, space_id)


def cluster_routes(
    router: ClusterRouter, settings: Settings, access_of: Callable[..., ClusterAccess],
    embedder: ServeQueryEmbedder | None = None, obs: ClusterObs | None = None,
) -> APIRouter:  # fmt: skip
    """The routes an API node serves; each sees its caller through `access_of` (a dependency:
    names resolve in the key's tenant, grants are checked, texts charged). Query text is
    embedded by `embedder` (the shared inference service) when given, else by the router;
    `obs` remembers answered queries (feedback, drift) and times query embedding."""
    api = APIRouter()
    caller = Depends(access_of)

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
    async def create_collection(body: CollectionCreate, access: ClusterAccess = caller) -> Response:
        check_name(body.name)
        access.principal.grant(body.name)
        access.note(collection=body.name)
        coll = await asyncio.to_thread(
            router.create_collection,
            access.principal.qualify(body.name),
            **creation_args(body, settings),
            lexical=body.lexical,
            lexical_fields=body.lexical_fields,
        )
        return JSON(_out(router, coll, access.principal), status_code=201)

    @api.get("/v1/collections", response_model=ClusterCollectionsOut)
    async def list_collections(access: ClusterAccess = caller) -> Response:
        """The collections of the key's tenant (those it has a grant for)."""
        rows = await asyncio.to_thread(router.catalog.list)
        shown = [_out(router, c, access.principal) for c in rows if access.principal.sees(c.name)]
        return JSON({"collections": shown})

    @api.get("/v1/collections/{name}", response_model=ClusterCollectionOut)
    async def get_collection(name: str, access: ClusterAccess = caller) -> Response:
        coll = await asyncio.to_thread(access.resolve, name)
        return JSON(_out(router, coll, access.principal))

    @api.delete("/v1/collections/{name}", response_model=DeletedOut)
    async def delete_collection(name: str, access: ClusterAccess = caller) -> Response:
        """Remove the collection from the catalog, its replicas from the nodes, its log topic."""
        access.principal.grant(name)
        await asyncio.to_thread(router.delete_collection, access.principal.qualify(name))
        return JSON({"deleted": name})

    @api.post("/v1/collections/{name}/documents", status_code=202, response_model=SubmittedOut)
    async def add_documents(
        name: str, body: DocumentsIn, access: ClusterAccess = caller
    ) -> Response:
        coll = await asyncio.to_thread(access.resolve, name)
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
        access.charge_texts(len(rows))
        job_id = await asyncio.to_thread(router.put_documents, coll.name, rows)
        access.note(documents=len(rows), job=job_id)
        body_out = {"job_id": job_id, "documents": len(rows), "unchanged": 0}
        return JSON(body_out, status_code=202)

    @api.get("/v1/collections/{name}/documents/{doc_id}", response_model=DocumentOut)
    async def get_document(name: str, doc_id: str, access: ClusterAccess = caller) -> Response:
        """A stored document as it was last written, from a replica of its shard."""
        coll = await asyncio.to_thread(access.resolve, name)
        row = await asyncio.to_thread(router.get_document, coll, doc_id)
        if row is None:
            raise NotFound(f"collection {coll.name!r} has no document {doc_id!r}")
        return JSON({**row, "collection": access.principal.display(coll.name)})

    @api.delete("/v1/collections/{name}/documents/{doc_id}", response_model=DeletedOut)
    async def delete_document(name: str, doc_id: str, access: ClusterAccess = caller) -> Response:
        """As on single node: 200 once the document is gone from every placed replica of its
        shard (the delete goes through the log); 404 when it does not exist."""
        coll = await asyncio.to_thread(access.resolve, name)
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
    async def get_job(job_id: str, access: ClusterAccess = caller) -> Response:
        """A job of the key's tenant (another tenant's is a 404, as an unknown one)."""
        job = await asyncio.to_thread(router.job, job_id)
        if not access.principal.sees(job["collection"]):
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        now = time.time()
        return JSON(
            {
                "id": job_id,
                "status": job["status"],
                "collection": access.principal.display(job["collection"]),
                "documents": job["documents"],
                "attempts": 1,
                "result": {"shards": {str(k): v for k, v in job["shards"].items()}},
                "error": None,
                "rejected": job["rejected"],
                "created_at": job["created_at"],
                "updated_at": now,
            }
        )

    @api.post("/v1/collections/{name}/query", response_model=QueryOut)
    async def query(name: str, body: QueryIn, access: ClusterAccess = caller) -> Response:
        """As on single node: dense, lexical or hybrid (the collection's search settings, else
        the server defaults), with filter and group_by; hybrid and lexical fuse every shard's
        candidates with the single-node code (cluster/fused.py)."""
        started = time.perf_counter()
        if body.k > settings.max_k:
            raise InvalidInput(f"'k' is {body.k}, over the limit of {settings.max_k}")
        check_filter(body.filter, settings.max_filter_conditions)
        coll = await asyncio.to_thread(access.resolve, name)
        access.charge_texts(1)
        # the space this query reads, resolved once: a cutover meanwhile cannot mix spaces
        space_id, _ = router.space_of(coll, body.space_id)
        record, space = _record(router, coll, space_id)
        how = retrieval(body, record)
        knobs = search_knobs(body, record)  # checked here, before the query fans out
        group = body.group_by is not None

        def embed(text: str) -> Awaitable[np.ndarray]:
            if embedder is not None:
                call = embedder.embed(coll, text, space_id, None)
            else:
                call = asyncio.to_thread(router.embed_query, coll, text, space_id)
            via = "service" if embedder is not None else "local"
            return obs.timed_embed(space.model, via, call) if obs is not None else call

        vec, text = await query_inputs(body, how, record, space, embed, settings.max_document_chars)
        if how.mode == "dense" and (not group or how.doc_scoring == "max"):
            assert vec is not None
            hits = await asyncio.to_thread(
                router.search, coll, space_id, vec, body.k, body.filter, group, knobs
            )
        else:
            hits = await asyncio.to_thread(
                router.fused_search, coll, space_id, vec, text, body.k, body.filter, group, how,
                knobs,
            )  # fmt: skip
        query_id = (
            await asyncio.to_thread(obs.observe, coll, space_id, vec, hits)
            if obs is not None
            else uuid.uuid4().hex
        )
        took = (time.perf_counter() - started) * 1000
        return JSON(
            {
                "hits": hits,
                "collection": access.principal.display(coll.name),
                "space_id": space_id,
                "mode": how.mode,
                "took_ms": took,
                "budget_ms": settings.cluster_replica_timeout_s * 1000,
                "query_id": query_id,
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
    router: ClusterRouter, settings: Settings, keys: RedisKeys | None = None,
    embedder: ServeQueryEmbedder | None = None,
) -> FastAPI:  # fmt: skip
    """The API node's app; `keys`: where API keys are checked (default: the catalog's Redis);
    `embedder`: query embedding through the shared inference service (default: the router's
    own models). Every request needs a key unless settings.insecure_no_auth."""
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
    limiter = RateLimiter.of(settings)
    access = access_of(router.catalog, limiter)
    obs = ClusterObs(router, settings)
    served = [
        cluster_routes(router, settings, access, embedder, obs),
        upgrade_routes(cluster_upgrades, access),
        alias_routes(router.catalog, access),
        key_routes(keys),
        write_routes(router, settings, access, _out, embedder),
        obs.routes(access),
    ]
    return obs.install(mount(app, served, errors, keys, settings, limiter))


def creation_args(body: CollectionCreate, settings: Settings) -> dict[str, Any]:
    """What a cluster (or a federated region) creates a collection with, from the request."""
    return {
        "shards": settings.cluster_shards,
        "replicas": settings.cluster_replicas,
        "model": body.model,
        "dim": body.dim,
        "metric": body.metric,
        "chunking": body.chunking.model_dump() if body.chunking else None,
        "index": body.index,
        "search": body.search.model_dump(exclude_none=True) if body.search else None,
        "template": body.record.model_dump() if body.record else None,
    }


def mount(
    app: FastAPI, served: list[APIRouter], errors: dict[int | str, dict[str, Any]],
    keys: RedisKeys, settings: Settings, limiter: RateLimiter,
) -> FastAPI:  # fmt: skip
    """Include the `served` routers, answer every other single-node route 501 (naming the
    mode), and put the ClusterGate (keys, rate limits) in front of all of it."""
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
    app.add_middleware(BodyLimit, limit=settings.max_body_bytes)
    app.add_middleware(ClusterGate, keys=keys, settings=settings, limiter=limiter)
    return app
