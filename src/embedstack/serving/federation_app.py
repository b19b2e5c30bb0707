"""The HTTP API of an API node of a federated cluster (`embedstack serve --cluster ... --queue
eu=kafka://...,us=kafka://...`): cluster mode across regions with data residency
(cluster/federation.py).

Every collection declares a residency policy at creation (`residency`: allowed regions, the
metadata field naming a document's region, what of a hit may cross a border, what a query
may carry into another region). Documents are validated against it (422 naming the allowed
regions). A query (dense, lexical or hybrid) names its caller's region (`region`, default the
API node's) and optionally the regions to read (`regions`); its text goes to each region,
which embeds it; hits from another region than the caller's carry only the policy's crossing
kinds. A region that is down answers 503 naming it. GET /metrics exports
embedstack_region_payload_bytes_total. Aliases, API keys and tenants are served (names in the
key's tenant, as on a cluster API node); every other single-node route answers 501.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field
from starlette.responses import Response

from embedstack.cluster.federation import FederatedCollection, FederatedRouter
from embedstack.cluster.keys import RedisKeys
from embedstack.config import Settings
from embedstack.errors import InvalidInput, NotFound, SpaceMismatch
from embedstack.registry.collections import check_name, describe_config
from embedstack.serving.app import install_error_handlers
from embedstack.serving.auth import INSECURE, Principal, principal_of
from embedstack.serving.cluster_app import creation_args, mount
from embedstack.serving.cluster_auth import TenantAccess, alias_routes, key_routes
from embedstack.serving.http import JSON
from embedstack.serving.limits import RateLimiter, check_filter
from embedstack.serving.responses import DeletedOut, JobOut, SubmittedOut
from embedstack.serving.routes.documents import check_count, checked_vector, document_rows
from embedstack.serving.routes.query import checked_text, retrieval, search_knobs
from embedstack.serving.schemas import (
    CollectionCreate,
    DocumentsIn,
    QueryIn,
    Strict,
    Text,
)
from embedstack.storage.catalog import SpaceInfo
from embedstack.storage.store import CollectionRecord


class ResidencyIn(Strict):
    regions: list[Text] = Field(description="regions documents may live in, e.g. ['eu', 'us']")
    field: Text = Field("region", description="the metadata key naming a document's region")
    crossing: list[Text] = Field(
        default_factory=lambda: ["ids", "scores"],
        description="what of a hit may leave its region: ids and scores always, optionally "
        "text and metadata; never vectors",
    )
    query: list[Text] = Field(
        default_factory=lambda: ["text"],
        description="what a query may carry into another region than its caller's: its text "
        "(each region embeds it), and 'vector' to let a caller's query vector cross",
    )


class FederatedCollectionCreate(CollectionCreate):
    residency: ResidencyIn = Field(description="where the documents live and what may cross")


class FederatedQueryIn(QueryIn):
    region: Text | None = Field(
        None,
        description="the caller's region (default: the API node's; without one, every region "
        "answers with its crossing kinds only)",
    )
    regions: list[Text] | None = Field(
        None, description="read only these regions (default: every region of the collection)"
    )


class RegionCountsOut(BaseModel):
    documents: int
    vectors: int


class FederatedCollectionOut(BaseModel):
    name: str
    model: str | None
    space_id: str
    dim: int
    metric: str
    chunking: dict[str, Any] | None
    index: dict[str, Any]
    shards: int
    replicas: int
    residency: dict[str, Any]
    regions: dict[str, RegionCountsOut | None] = Field(
        description="documents and vectors held in each region; null: region unavailable"
    )


class FederatedCollectionsOut(BaseModel):
    collections: list[FederatedCollectionOut]


class _RegionRow(BaseModel):
    """What a region may let cross: its id, and text/metadata when the policy allows."""

    document_id: str
    region: str
    text: str | None = Field(None, description="absent when the policy keeps text in region")
    metadata: dict[str, Any] | None = None


class FederatedHitOut(_RegionRow):
    chunk_id: str
    score: float


class FederatedDocumentOut(_RegionRow):
    collection: str


class FederatedQueryOut(BaseModel):
    hits: list[FederatedHitOut]
    collection: str
    space_id: str
    mode: str
    caller: str
    regions: list[str]
    took_ms: float


class FederationHealthOut(BaseModel):
    status: str
    regions: dict[str, bool]


FederatedAccess = TenantAccess[FederatedCollection]  # names resolve in the key's tenant


def _out(
    router: FederatedRouter, c: FederatedCollection, counts: bool, p: Principal
) -> dict[str, Any]:
    d = describe_config(CollectionRecord(c.name, c.config, c.space_id, c.created_at))
    return {
        "name": p.display(c.name), "model": c.config.model, "space_id": c.space_id, "dim": d["dim"],
        "metric": d["metric"], "chunking": d["chunking"], "index": d["index"],
        "shards": c.shards, "replicas": c.replicas, "residency": c.policy.to_json(),
        "regions": router.counts(c) if counts else {},
    }  # fmt: skip


def _space(router: FederatedRouter, c: FederatedCollection) -> tuple[CollectionRecord, SpaceInfo]:
    model = c.config.model
    spec = router.models.get(model).spec if model else None
    record = CollectionRecord(c.name, c.config, c.space_id, c.created_at)
    return record, SpaceInfo(c.name, c.space_id, model, spec, "serving", 0.0)


def federated_access(
    router: FederatedRouter, limiter: RateLimiter
) -> Callable[[Request], FederatedAccess]:
    """The dependency that hands a route its FederatedAccess (the gate set the principal)."""

    def access_of(request: Request) -> FederatedAccess:
        return FederatedAccess(principal_of(request) or INSECURE, router, limiter)

    return access_of


def federation_routes(
    router: FederatedRouter, settings: Settings, limiter: RateLimiter
) -> APIRouter:
    api = APIRouter()
    caller = Depends(federated_access(router, limiter))

    def health() -> dict[str, Any]:
        regions = router.live()
        return {"status": "ok" if all(regions.values()) else "degraded", "regions": regions}

    @api.get("/healthz", response_model=FederationHealthOut)
    async def healthz() -> Response:
        return JSON(await asyncio.to_thread(health))

    @api.get("/readyz", response_model=FederationHealthOut)
    async def readyz() -> Response:
        """Ready while some region is live (a lost region fails only what needs it)."""
        body = await asyncio.to_thread(health)
        return JSON(body, status_code=200 if any(body["regions"].values()) else 503)

    @api.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        return Response(generate_latest(router.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @api.post("/v1/collections", status_code=201, response_model=FederatedCollectionOut)
    async def create_collection(
        body: FederatedCollectionCreate, access: FederatedAccess = caller
    ) -> Response:
        p = access.principal
        check_name(body.name)
        p.grant(body.name)
        coll = await asyncio.to_thread(
            router.create_collection,
            p.qualify(body.name),
            body.residency.model_dump(),
            **creation_args(body, settings),
        )
        return JSON(await asyncio.to_thread(_out, router, coll, False, p), status_code=201)

    @api.get("/v1/collections", response_model=FederatedCollectionsOut)
    async def list_collections(access: FederatedAccess = caller) -> Response:
        """The collections of the key's tenant (those it has a grant for)."""
        p = access.principal
        rows = await asyncio.to_thread(router.collections)
        return JSON({"collections": [_out(router, c, False, p) for c in rows if p.sees(c.name)]})

    @api.get("/v1/collections/{name}", response_model=FederatedCollectionOut)
    async def get_collection(name: str, access: FederatedAccess = caller) -> Response:
        coll = await asyncio.to_thread(access.resolve, name)
        return JSON(await asyncio.to_thread(_out, router, coll, True, access.principal))

    @api.delete("/v1/collections/{name}", response_model=DeletedOut)
    async def delete_collection(name: str, access: FederatedAccess = caller) -> Response:
        access.principal.grant(name)
        await asyncio.to_thread(router.delete_collection, access.principal.qualify(name))
        return JSON({"deleted": name})

    @api.post("/v1/collections/{name}/documents", status_code=202, response_model=SubmittedOut)
    async def add_documents(
        name: str, body: DocumentsIn, region: str | None = None, access: FederatedAccess = caller
    ) -> Response:
        """Each document goes to the region its residency field names (422 otherwise)."""
        coll = await asyncio.to_thread(access.resolve, name)
        check_count(len(body.documents), settings.max_documents_per_request, "documents")
        record, space = _space(router, coll)
        rows = document_rows(body.documents, record, space, settings)
        router.split(coll, rows)  # every document names an allowed region, before any write
        router.caller(region)  # a region the API node serves, before any write
        access.charge_texts(len(rows))
        job_id = await asyncio.to_thread(router.put_documents, coll.name, rows, region)
        return JSON({"job_id": job_id, "documents": len(rows), "unchanged": 0}, status_code=202)

    @api.get("/v1/collections/{name}/documents/{doc_id}", response_model=FederatedDocumentOut)
    async def get_document(
        name: str, doc_id: str, region: str | None = None, access: FederatedAccess = caller
    ) -> Response:
        """A stored document from its region; a caller of another region (`region`, default
        the API node's) gets only what the policy lets cross."""
        coll = await asyncio.to_thread(access.resolve, name)
        doc = await asyncio.to_thread(router.get_document, coll.name, doc_id, region)
        return JSON({**doc, "collection": access.principal.display(coll.name)})

    @api.delete("/v1/collections/{name}/documents/{doc_id}", response_model=DeletedOut)
    async def delete_document(name: str, doc_id: str, access: FederatedAccess = caller) -> Response:
        """200 once the document is gone from every replica of every region that held it;
        503 naming a region that is down (the document might be there)."""
        coll = await asyncio.to_thread(access.resolve, name)
        await asyncio.to_thread(router.delete_document, coll.name, doc_id)
        return JSON({"deleted": doc_id})

    @api.get("/v1/jobs/{job_id}", response_model=JobOut)
    async def get_job(job_id: str, access: FederatedAccess = caller) -> Response:
        """A job of the key's tenant (another tenant's is a 404, as an unknown one)."""
        job = await asyncio.to_thread(router.job, job_id)
        p = access.principal
        if not p.sees(job["collection"]):
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        return JSON(
            {
                "id": job_id, "status": job["status"], "collection": p.display(job["collection"]),
                "documents": job["documents"], "attempts": 1,
                "result": {"regions": job["regions"], "moved": job["moved"]}, "error": None,
                "created_at": job["created_at"], "updated_at": time.time(),
            }
        )  # fmt: skip

    @api.post("/v1/collections/{name}/query", response_model=FederatedQueryOut)
    async def query(
        name: str, body: FederatedQueryIn, access: FederatedAccess = caller
    ) -> Response:
        """Dense, lexical or hybrid (the collection's search settings, else the server
        defaults), with filter and group_by: each region searches and fuses its own shards
        (its own lexical statistics), the API node merges the regions' hits by score."""
        started = time.perf_counter()
        if body.k > settings.max_k:
            raise InvalidInput(f"'k' is {body.k}, over the limit of {settings.max_k}")
        check_filter(body.filter, settings.max_filter_conditions)
        coll = await asyncio.to_thread(access.resolve, name)
        access.charge_texts(1)
        if body.space_id not in (None, coll.space_id):
            raise SpaceMismatch(
                f"space {body.space_id} is not the space of collection {coll.name!r} "
                f"({coll.space_id}): vectors from different spaces cannot be mixed"
            )
        record, space = _space(router, coll)
        how = retrieval(body, record)
        knobs = search_knobs(body, record)  # checked here, before the query crosses to regions
        if how.mode == "lexical" and body.vector is not None:
            raise InvalidInput("mode 'lexical' searches 'text' only: drop 'vector'")
        if how.mode != "dense" and body.text is None:
            raise InvalidInput(f"mode {how.mode!r} searches words: send 'text'")
        text = None
        if body.text is not None:
            text = checked_text(body.text, settings.max_document_chars)
        vector = None
        if body.vector is not None:
            claimed = body.space_id is not None
            vector = checked_vector(body.vector, record, space, "'vector'", claimed)
        out = await asyncio.to_thread(
            router.query, coll.name, text=text, vector=vector, k=body.k, flt=body.filter,
            group=body.group_by == "document", caller=body.region, regions=body.regions,
            how=how, knobs=knobs,
        )  # fmt: skip
        took = (time.perf_counter() - started) * 1000
        return JSON({**out, "collection": access.principal.display(coll.name),
                     "space_id": coll.space_id, "mode": how.mode, "took_ms": took})  # fmt: skip

    return api


def create_federation_app(
    router: FederatedRouter, settings: Settings, keys: RedisKeys | None = None
) -> FastAPI:
    """The federated API node's app; `keys`: where API keys are checked (default: the
    catalog's Redis). Every request needs a key unless settings.insecure_no_auth."""
    app = FastAPI(
        title="embedstack (federated cluster)",
        version="0.1.0",
        default_response_class=JSON,
        description="An API node of a federated embedstack cluster: regions with data residency.",
    )
    errors = install_error_handlers(app)
    keys = keys if keys is not None else router.keys()
    limiter = RateLimiter.of(settings)
    served = [
        federation_routes(router, settings, limiter),
        alias_routes(router, federated_access(router, limiter)),
        key_routes(keys),
    ]
    return mount(app, served, errors, keys, settings, limiter)
