"""More single-node routes on a cluster API node, with the single-node request checks and
response shapes (the parsing code is single node's, shared):

- `POST /v1/collections/{name}/vectors` (bring-your-own vectors: JSON with base64, or multipart
  with an .npy part) and `POST /v1/collections/{name}/records` (records made documents by the
  collection's template; a record that does not fit is rejected on its own and listed with the
  job): through the log as documents are, appended to the shard partitions before the 202,
  applied by every replica (vectors are stored as sent, never embedded); the job is `done` as
  a documents job is (every placed live replica of each shard it wrote applied it).
- `PATCH /v1/collections/{name}`: new index settings and/or query defaults, checked as single
  node checks them, go into the catalog and, as a `config` record, into every shard partition;
  every replica applies it in log order (a new index is built aside and swapped, as single node
  rebuilds). Query defaults apply to the next query at once (every API node reads them from the
  catalog); "done" for an index change: GET collection says `rebuilding: false` once every
  placed live replica of every shard has applied the record (the quorum of a job: all), and
  reports a replica's failed rebuild as `last_rebuild_error` (its old index keeps serving).
  Not checked before the 202, unlike single node: a quantized index's recall floor on a
  sample of the data (an API node holds none; each replica trains the index with its
  `recall_floor` param as the gate, which raises the search knobs and logs when unmet).
- `POST /v1/embeddings` (OpenAI-compatible): through the shared inference service's model
  deployments when the API node has one (`serve --cluster --inference`), else the API node's
  own model behind the single-node Batcher; the same limits, budget header and 429 on
  overload as single node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.router import ClusterRouter
from embedstack.config import Settings
from embedstack.errors import InvalidInput
from embedstack.registry.collections import indexed_config, searched_config
from embedstack.serving.auth import Principal
from embedstack.serving.cluster_auth import ClusterAccess
from embedstack.serving.cluster_inference import ServeQueryEmbedder, local_embedder
from embedstack.serving.http import JSON, unless_disconnected
from embedstack.serving.responses import CollectionOut, EmbeddingsOut, SubmittedOut
from embedstack.serving.routes.documents import check_count, read_vector_upload, vector_rows
from embedstack.serving.routes.embeddings import (
    check_dimensions,
    embedding_deadline,
    embedding_inputs,
    embeddings_body,
)
from embedstack.serving.routes.records import documents_of, template_of
from embedstack.serving.schemas import CollectionPatch, EmbeddingRequest, RecordsIn
from embedstack.serving.vector_bodies import OPENAPI
from embedstack.types import CollectionConfig

Describe = Callable[[ClusterRouter, ClusterCollection, Principal], dict[str, Any]]


def write_routes(
    router: ClusterRouter, settings: Settings, access_of: Callable[..., ClusterAccess],
    describe: Describe, embedder: ServeQueryEmbedder | None = None,
) -> APIRouter:  # fmt: skip
    """The routes; `describe`: a cluster collection as GET collection shows it; `embedder`:
    the shared inference service (None: a Batcher per model in this process, stopped with the
    app)."""
    own = local_embedder(router, settings) if embedder is None else None
    texts_embedder = embedder or own
    assert texts_embedder is not None
    api = APIRouter(on_shutdown=[own.stop] if own is not None else [])
    caller = Depends(access_of)

    def submitted(job_id: str, documents: int, rejected: int = 0) -> Response:
        body = {"job_id": job_id, "documents": documents, "unchanged": 0, "rejected": rejected}
        return JSON(body, status_code=202)

    @api.post(
        "/v1/collections/{name}/vectors",
        status_code=202,
        response_model=SubmittedOut,
        openapi_extra=OPENAPI,
    )
    async def add_vectors(name: str, request: Request, access: ClusterAccess = caller) -> Response:
        """As on single node: bring-your-own vectors in bulk, JSON with base64 float32 or
        multipart with an .npy part; appended to the log, the 202 once the broker has them."""
        coll = await asyncio.to_thread(access.resolve, name)
        body, data, fmt = await read_vector_upload(request, settings)
        access.charge_texts(len(body.ids))
        record, space = router.single_node_view(coll)
        rows = await asyncio.to_thread(vector_rows, body, data, fmt, record, space, settings)
        job_id = await asyncio.to_thread(router.put_documents, coll.name, rows)
        return submitted(job_id, len(rows))

    @api.post("/v1/collections/{name}/records", status_code=202, response_model=SubmittedOut)
    async def add_records(name: str, body: RecordsIn, access: ClusterAccess = caller) -> Response:
        """As on single node: records -> documents by the collection's template; the rejected
        ones are kept with the job (GET /v1/jobs/{id} lists them)."""
        coll = await asyncio.to_thread(access.resolve, name)
        check_count(len(body.records), settings.max_documents_per_request, "records")
        record, space = router.single_node_view(coll)
        template = template_of(record, bool(space.model), access.principal.display(coll.name))
        access.charge_texts(len(body.records))
        rows, rejected = documents_of(template, body.records, settings)
        job_id = await asyncio.to_thread(router.put_documents, coll.name, rows, rejected)
        return submitted(job_id, len(rows), len(rejected))

    @api.patch("/v1/collections/{name}", status_code=202, response_model=CollectionOut)
    async def update_collection(
        name: str, body: CollectionPatch, access: ClusterAccess = caller
    ) -> Response:
        """As on single node: new index settings (rebuilt by every replica) and/or query
        defaults (at once); 202 with the description, `rebuilding` until every replica has
        the new index."""
        if body.index is None and body.search is None:
            raise InvalidInput("send 'index' and/or 'search' to change")
        coll = await asyncio.to_thread(access.resolve, name)
        shapes = _shapes(router, coll)

        def change(config: CollectionConfig) -> CollectionConfig:
            if body.search is not None:
                fields = body.search.model_dump(exclude_unset=True)
                config = searched_config(config, coll.name, fields)
            if body.index is not None:
                config = indexed_config(config, body.index, shapes)
            return config

        changed = await asyncio.to_thread(router.change_settings, coll.name, change)
        out = await asyncio.to_thread(describe, router, changed, access.principal)
        out["rebuilding"] = bool(out.get("rebuilding")) or body.index is not None
        return JSON(out, status_code=202)

    @api.post("/v1/embeddings", response_model=EmbeddingsOut)
    async def create_embeddings(
        body: EmbeddingRequest, request: Request, access: ClusterAccess = caller
    ) -> Response:
        """As on single node (OpenAI-compatible), embedded by the shared inference service
        when this API node has one, else by its own model."""
        texts = embedding_inputs(body, settings)
        access.charge_texts(len(texts))
        model = body.model or settings.default_model
        embedder = await asyncio.to_thread(router.models.get, model)
        check_dimensions(body, model, embedder.spec.dim)
        deadline = embedding_deadline(request, settings)
        vectors, tokens = await unless_disconnected(
            request, texts_embedder.embed_texts(model, texts, deadline)
        )
        return JSON(embeddings_body(body, model, vectors, tokens))

    return api


def _shapes(router: ClusterRouter, coll: ClusterCollection) -> list[tuple[int, str]]:
    """(dim, metric) of every space of the collection (serving, shadow, previous): a new index
    must be buildable for each, as on single node."""
    shapes: list[tuple[int, str]] = []
    for ref in (coll.space_id, coll.shadow, coll.previous):
        if ref is None:
            continue
        _, space = router.single_node_view(coll, ref if isinstance(ref, str) else ref.space_id)
        spec = space.model_spec
        shapes.append((spec.dim, spec.metric) if spec else (coll.config.dim, coll.config.metric))
    return shapes
