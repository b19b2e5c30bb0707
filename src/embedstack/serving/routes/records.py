"""Structured records: POST /v1/collections/{name}/records (202 + job), through the collection's
record template. A record that does not fit is rejected on its own: its position and why are
kept with the job (GET /v1/jobs/{id} lists them), the other records become documents."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from starlette.responses import Response

from embedstack.config import Settings
from embedstack.errors import InvalidInput
from embedstack.ingest.records import Rejected, apply_template
from embedstack.serving.auth import Access, writing
from embedstack.serving.responses import SubmittedOut
from embedstack.serving.routes.deps import ready_services
from embedstack.serving.routes.documents import accepted, check_count, text_row
from embedstack.serving.schemas import MAX_ID_CHARS, RecordsIn
from embedstack.serving.services import Services
from embedstack.storage.store import CollectionRecord, DocumentRow
from embedstack.types import RecordTemplate

router = APIRouter()
SHOWN_ID_CHARS = 64  # a rejected record's id, when it has one, names it next to its position


@router.post("/v1/collections/{name}/records", status_code=202, response_model=SubmittedOut)
async def add_records(
    name: str, body: RecordsIn, services: Services = Depends(ready_services),
    access: Access = Depends(writing),
) -> Response:  # fmt: skip
    """Records -> documents by the collection's template. The 202 counts the documents and the
    rejected records; a request whose records are all rejected still gets its job, which lists
    every rejection."""
    record = await access.resolve(name)
    check_count(len(body.records), services.settings.max_documents_per_request, "records")
    has_model = bool(services.collections.space(record).model)
    template = template_of(record, has_model, access.display(record.name))
    access.charge_texts(len(body.records))
    rows, rejected = documents_of(template, body.records, services.settings)
    return await accepted(services, access, record.name, rows, rejected)


def template_of(record: CollectionRecord, has_model: bool, shown: str) -> RecordTemplate:
    """The template records of collection `record` (`shown`: its name as the caller sees it)
    become documents by; InvalidInput naming the fix when it has none or no model (shared by
    single node and cluster API nodes)."""
    if record.config.record is None:
        raise InvalidInput(
            f"collection {shown!r} has no record template, so records cannot become documents: "
            'create a collection with "record": {"id": FIELD, "text": [FIELDS], "metadata": '
            "[FIELDS]} (a template is fixed at creation), or POST documents "
            '({"id", "text", "metadata"}) to this one'
        )
    if not has_model:
        raise InvalidInput(
            f"collection {shown!r} has no model, and records become text documents: create the "
            "collection with a model, or POST vectors"
        )
    return record.config.record


def documents_of(
    template: RecordTemplate, records: list[Any], settings: Settings
) -> tuple[list[DocumentRow], list[Rejected]]:
    """The documents the records make, and each record that makes none with its reason."""
    rows: list[DocumentRow] = []
    rejected: list[Rejected] = []
    first: dict[str, int] = {}  # id -> the position of the record that made it
    for i, item in enumerate(records):
        where = f"records[{i}]"
        if not isinstance(item, dict):
            rejected.append(Rejected(where, f"a record is a JSON object, got {_kind(item)}"))
            continue
        given = item.get(template.id)
        if isinstance(given, str | int) and len(str(given)) <= SHOWN_ID_CHARS:
            where += f" ({template.id} {given!r})"  # a position alone is relative to a request
        try:
            doc = apply_template(template, item)
            if len(doc.id) > MAX_ID_CHARS:
                raise InvalidInput(
                    f"id field {template.id!r} has {len(doc.id)} characters, over the "
                    f"{MAX_ID_CHARS} limit"
                )
            if doc.id in first:
                raise InvalidInput(
                    f"id {doc.id!r} repeats records[{first[doc.id]}]: each record needs its own id"
                )
            rows.append(text_row(doc.id, doc.text, doc.metadata, "its document", settings))
            first[doc.id] = i
        except InvalidInput as exc:
            rejected.append(Rejected(where, exc.message))
    return rows, rejected


def _kind(value: Any) -> str:
    return {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number"
    )
