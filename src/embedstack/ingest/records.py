"""Structured records -> documents through a collection's record template.

A template names the id field, the text fields and the metadata fields. It is checked once,
when the collection is created (`parse_template`); every record is checked against it when it
is read (`apply_template`), and a record that does not fit is rejected with its own error, never
skipped silently and never failing the records around it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from embedstack.errors import InvalidInput
from embedstack.types import Document, RecordTemplate

TEMPLATE_KEYS = ("id", "text", "metadata", "separator")
MAX_FIELD = 256  # characters in a field name


@dataclass(frozen=True)
class Rejected:
    """One input that did not become a document: where it was and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def parse_template(data: Mapping[str, Any]) -> RecordTemplate:
    """A record template from its JSON form, or InvalidInput naming what to fix."""
    unknown = set(data) - set(TEMPLATE_KEYS)
    if unknown:
        raise InvalidInput(
            f"unknown record template field(s) {sorted(unknown)}: use {', '.join(TEMPLATE_KEYS)}"
        )
    id_field = data.get("id")
    if not _field_name(id_field):
        raise InvalidInput("record template 'id' must name the field that is the document id")
    text = data.get("text")
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not text or not all(_field_name(f) for f in text):
        raise InvalidInput(
            "record template 'text' must be a non-empty list of field names whose values form "
            "the document text"
        )
    meta = data.get("metadata") or []
    if not isinstance(meta, list) or not all(_field_name(f) for f in meta):
        raise InvalidInput("record template 'metadata' must be a list of field names")
    separator = data.get("separator", "\n")
    if not isinstance(separator, str):
        raise InvalidInput("record template 'separator' must be a string")
    for name, fields in (("text", text), ("metadata", meta)):
        if len(set(fields)) != len(fields):
            raise InvalidInput(f"record template '{name}' names a field twice")
    return RecordTemplate(str(id_field), tuple(text), tuple(meta), separator)


def _field_name(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_FIELD


def apply_template(template: RecordTemplate, record: Mapping[str, Any]) -> Document:
    """The document a record makes, or InvalidInput naming the missing or unusable fields."""
    missing = [f for f in (template.id, *template.text) if _absent(record.get(f))]
    if missing:
        present = ", ".join(sorted(str(k) for k in record if not _absent(record[k]))[:20])
        role = "id" if missing == [template.id] else "id/text" if template.id in missing else "text"
        raise InvalidInput(
            f"record has no value for {', '.join(repr(f) for f in missing)} (the template's "
            f"{role} field{'s' if len(missing) > 1 else ''}); fields with values: "
            f"{present or 'none'}"
        )
    doc_id = record[template.id]
    if not isinstance(doc_id, str | int) or isinstance(doc_id, bool):
        raise InvalidInput(
            f"record id field {template.id!r} is {type(doc_id).__name__}: use a string or integer"
        )
    texts = []
    for f in template.text:
        value = record[f]
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            raise InvalidInput(f"record text field {f!r} is {type(value).__name__}, not text")
        texts.append(str(value))
    text = template.separator.join(texts)
    if not text.strip():
        raise InvalidInput("record text fields are all blank: nothing to embed")
    metadata = {f: _json_value(record[f]) for f in template.metadata if not _absent(record.get(f))}
    return Document(str(doc_id), text, metadata)


def _absent(value: object) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _json_value(value: Any) -> Any:
    """A metadata value as JSON (Parquet gives dates, decimals, numpy scalars)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_json_value(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return _json_value(item())
    iso = getattr(value, "isoformat", None)  # dates and times
    return iso() if callable(iso) else str(value)


def records_to_documents(
    template: RecordTemplate, records: Iterator[tuple[str, Mapping[str, Any] | Rejected]]
) -> Iterator[Document | Rejected]:
    """Apply the template to (where, record) pairs; a misfit becomes a Rejected."""
    for where, record in records:
        if isinstance(record, Rejected):
            yield record
            continue
        try:
            yield apply_template(template, record)
        except InvalidInput as exc:
            yield Rejected(where, exc.message)


def decode_record(where: str, raw: bytes) -> Mapping[str, Any] | Rejected:
    """One JSON object (a JSONL line, a stream message), or a Rejected."""
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return Rejected(where, f"not valid JSON ({exc})")
    if not isinstance(obj, dict):
        return Rejected(where, f"a record must be a JSON object, got {type(obj).__name__}")
    return obj


def jsonl_records(file: Path) -> Iterator[tuple[str, Mapping[str, Any] | Rejected]]:
    with file.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if line.strip():
                where = f"{file}:{lineno}"
                yield where, decode_record(where, line)


def csv_records(file: Path) -> Iterator[tuple[str, Mapping[str, Any] | Rejected]]:
    """Rows of a CSV file with a header line, by their line number.

    The file is split into records first (a quoted field may span lines), then each record is
    parsed on its own, so a broken quote is an error for its own row and never for the rest of
    the file: when the lines a quote spans do not parse as one row of the header's width, the
    first line alone is rejected and reading resumes on the next line.
    """
    text = file.read_text(encoding="utf-8-sig", errors="replace")
    lines = text.splitlines(keepends=True)
    if not lines:
        return
    try:
        header = next(csv.reader([lines[0]], strict=True), [])
    except csv.Error:
        header = []
    if not header or len(set(header)) != len(header):
        yield f"{file}:1", Rejected(f"{file}:1", "the header line must name distinct columns")
        return
    i = 1
    while i < len(lines):
        start, end, quotes = i, i + 1, lines[i].count('"')
        while quotes % 2 == 1 and end < len(lines):  # a quoted field spans lines
            quotes += lines[end].count('"')
            end += 1
        row = _csv_row(header, "".join(lines[start:end]))
        if isinstance(row, Rejected) and end - start > 1:
            end, row = start + 1, _csv_row(header, lines[start])  # the quote was broken
        i = end
        where = f"{file}:{start + 1}" if end - start == 1 else f"{file}:{start + 1}-{end}"
        if not "".join(lines[start:end]).strip():
            continue
        yield where, Rejected(where, row.reason) if isinstance(row, Rejected) else row


def _csv_row(header: list[str], record: str) -> Mapping[str, Any] | Rejected:
    try:
        rows = list(csv.reader(io.StringIO(record), strict=True))
    except csv.Error as exc:
        return Rejected("", f"malformed CSV ({exc}): check the quotes of this row")
    if len(rows) != 1:
        return Rejected("", "malformed CSV: a quote is not closed before the end of the file")
    row = rows[0]
    if len(row) != len(header):
        return Rejected("", f"row has {len(row)} fields, the header names {len(header)}")
    return dict(zip(header, row, strict=True))


def parquet_records(file: Path) -> Iterator[tuple[str, Mapping[str, Any] | Rejected]]:
    """Rows of a Parquet file by row number, read one row group at a time."""
    import pyarrow.parquet as pq

    try:
        reader = pq.ParquetFile(file)
    except Exception as exc:  # pyarrow raises ArrowInvalid, OSError, ... for a bad file
        yield str(file), Rejected(str(file), f"not a readable Parquet file ({exc})")
        return
    row = 0
    for group in range(reader.num_row_groups):
        try:
            rows = reader.read_row_group(group).to_pylist()
        except Exception as exc:
            yield (
                f"{file}:group {group}",
                Rejected(f"{file}:group {group}", f"row group unreadable ({exc})"),
            )
            continue
        for record in rows:
            row += 1
            yield f"{file}:row {row}", record
