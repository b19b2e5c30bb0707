"""POST /v1/embeddings: OpenAI-compatible."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import numpy as np
from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from embedstack.config import Settings
from embedstack.errors import InvalidInput
from embedstack.serving.auth import Access, reading
from embedstack.serving.http import JSON, unless_disconnected
from embedstack.serving.limits import budget_seconds
from embedstack.serving.responses import EmbeddingsOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.routes.query import arrival, requested_budget_ms
from embedstack.serving.schemas import EmbeddingRequest
from embedstack.serving.services import Services

router = APIRouter()


def embedding_inputs(body: EmbeddingRequest, settings: Settings) -> list[str]:
    """The request's texts, checked against the request limits (shared by single node and
    cluster API nodes)."""
    texts = [body.input] if isinstance(body.input, str) else body.input
    limit = settings.max_inputs_per_embedding_request
    if not texts:
        raise InvalidInput("'input' is empty: send a string or a non-empty list of strings")
    if len(texts) > limit:
        raise InvalidInput(f"'input' has {len(texts)} items, over the limit of {limit}: split it")
    max_chars = settings.max_document_chars
    for i, t in enumerate(texts):
        if not t.strip():
            raise InvalidInput(f"input[{i}] is empty or whitespace: every input needs text")
        if len(t) > max_chars:
            raise InvalidInput(f"input[{i}] has {len(t)} characters, over the {max_chars} limit")
    return texts


def check_dimensions(body: EmbeddingRequest, model: str, dim: int) -> None:
    if body.dimensions is not None and body.dimensions != dim:
        raise InvalidInput(
            f"model {model!r} makes {dim}-dim vectors; omit 'dimensions' or set it to {dim}"
        )


def embedding_deadline(request: Request, settings: Settings) -> float | None:
    """A budget only when the caller sends one (X-Request-Budget-Ms): a large request cannot
    meet the query default, but it still counts in the queue that queries are admitted behind."""
    requested = requested_budget_ms(request)
    if requested is None:
        return None
    return arrival(request) + budget_seconds(settings, requested)


def embeddings_body(
    body: EmbeddingRequest, model: str, vectors: np.ndarray, tokens: int
) -> dict[str, Any]:
    """The OpenAI-shaped answer (EmbeddingsOut): floats, or base64 of little-endian float32."""
    vectors = np.ascontiguousarray(vectors, dtype="<f4")
    data: list[dict[str, object]] = []
    for i, v in enumerate(vectors):
        emb: object = (
            base64.b64encode(v.tobytes()).decode() if body.encoding_format == "base64" else v
        )
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return {
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    }


@router.post("/v1/embeddings", response_model=EmbeddingsOut)
async def create_embeddings(
    body: EmbeddingRequest, request: Request, services: Services = Depends(ready_services),
    access: Access = Depends(reading),
) -> Response:  # fmt: skip
    texts = embedding_inputs(body, services.settings)
    access.charge_texts(len(texts))
    model = body.model or services.settings.default_model
    embedder = await asyncio.to_thread(services.models.get, model)
    check_dimensions(body, model, embedder.spec.dim)
    deadline = embedding_deadline(request, services.settings)
    vectors, tokens = await unless_disconnected(
        request, services.embed_counted(model, texts, deadline)
    )
    return JSON(embeddings_body(body, model, vectors, tokens))
