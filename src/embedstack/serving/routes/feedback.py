"""POST /v1/feedback: a click or a relevance grade on a hit of an answered query (by its
query_id), the live labels behind click-through@k and clicked MRR (registry/quality.py)."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.errors import InvalidInput, NotFound
from embedstack.serving.auth import Access, reading
from embedstack.serving.http import JSON
from embedstack.serving.responses import FeedbackOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.schemas import FeedbackIn
from embedstack.serving.services import Services

router = APIRouter()


@router.post("/v1/feedback", response_model=FeedbackOut)
async def feedback(
    body: FeedbackIn, services: Services = Depends(ready_services),
    access: Access = Depends(reading),
) -> Response:  # fmt: skip
    log = services.quality.feedback
    if not services.settings.quality_feedback:
        raise InvalidInput("feedback is turned off on this server (EMBEDSTACK_QUALITY_FEEDBACK)")
    if body.kind == "click" and body.grade is not None:
        raise InvalidInput("a click carries no 'grade': send kind 'grade' to grade a hit")
    owner = log.owner(body.query_id)
    if owner is None or not access.owns(owner[0]):  # another tenant's query is unknown here
        raise NotFound(
            f"query_id {body.query_id!r} is unknown or forgotten (the server remembers the last "
            f"{services.settings.feedback_max_queries} queries): send the query_id of a recent "
            "query response"
        )
    # committed to the feedback file before the answer: off the event loop
    (collection, space_id), rank = await asyncio.to_thread(
        log.record, body.query_id, body.document_id, body.kind, body.grade
    )
    services.metrics.feedback.labels(collection, space_id, body.kind).inc()
    access.note(collection=collection)
    return JSON({"query_id": body.query_id, "document_id": body.document_id, "rank": rank,
                 "recorded": body.kind})  # fmt: skip
