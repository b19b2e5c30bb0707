"""Reading documents from files and folders.

- .txt: one document per file.
- .md/.markdown/.rst: one document per section (split at headings), `section` = heading path.
- .html/.htm: the main text, one document per section; `title` and `section` as metadata.
- .pdf: one document per page with a text layer; `page` and `pages` as metadata.
- .jsonl: one {"id", "text", "metadata"} object per line; with a record template, any objects.
- .csv/.parquet: rows, through the collection's record template (required).

A file that makes several documents gives them ids `<file>#<n>` (sections) or `<file>#page=<n>`
(PDF pages); a file of one section keeps the plain file id. Every document gets `source` (the
file) in its metadata. Something that cannot be read yields a `Rejected` naming the file (or the
line or row) and the reason, and reading goes on with the rest.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

from embedstack.errors import InvalidInput
from embedstack.ingest.extract import (
    Section,
    html_sections,
    markdown_sections,
    pdf_pages,
    rst_sections,
)
from embedstack.ingest.records import (
    Rejected,
    csv_records,
    decode_record,
    jsonl_records,
    parquet_records,
    records_to_documents,
)
from embedstack.types import Document, RecordTemplate

TEXT_SUFFIXES = (".txt", ".md", ".markdown", ".rst")
RICH_SUFFIXES = (".html", ".htm", ".pdf")
RECORD_SUFFIXES = (".jsonl", ".csv", ".parquet")
SUFFIXES = TEXT_SUFFIXES + RICH_SUFFIXES + RECORD_SUFFIXES

_SECTIONS: dict[str, Callable[[str], list[Section]]] = {
    ".md": markdown_sections,
    ".markdown": markdown_sections,
    ".rst": rst_sections,
}

Item = Document | Rejected


def read_documents(path: Path, template: RecordTemplate | None = None) -> Iterator[Item]:
    """Documents (and Rejected inputs) from a file or every readable file under a folder."""
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if file.suffix.lower() in SUFFIXES:
                yield from read_file(file, str(file.relative_to(path)), template)
    elif path.is_file():
        yield from read_file(path, path.name, template)
    else:
        raise InvalidInput(f"{path} does not exist: give a file or a folder")


def read_file(file: Path, doc_id: str, template: RecordTemplate | None = None) -> Iterator[Item]:
    suffix = file.suffix.lower()
    if suffix in RECORD_SUFFIXES:
        yield from _records(file, suffix, template)
        return
    try:
        sections = _sections(file, suffix)
    except InvalidInput as exc:
        yield Rejected(str(file), exc.message)
        return
    except (OSError, UnicodeError, ValueError, RecursionError) as exc:
        yield Rejected(str(file), f"could not be read ({type(exc).__name__}: {exc})")
        return
    for n, section in enumerate(sections):
        if len(sections) == 1:
            sid = doc_id
        elif "page" in section.metadata:
            sid = f"{doc_id}#page={section.metadata['page']}"
        else:
            sid = f"{doc_id}#{n}"
        yield Document(sid, section.text, {"source": str(file), **section.metadata})


def _sections(file: Path, suffix: str) -> list[Section]:
    if suffix == ".pdf":
        return pdf_pages(file.read_bytes())
    if suffix in (".html", ".htm"):
        return html_sections(file.read_bytes())
    text = file.read_text(encoding="utf-8", errors="replace")
    if not text.strip():
        return []
    split = _SECTIONS.get(suffix)
    return split(text) if split is not None else [Section(text)]


def _records(file: Path, suffix: str, template: RecordTemplate | None) -> Iterator[Item]:
    if template is None:
        if suffix == ".jsonl":
            yield from _plain_jsonl(file)
            return
        yield Rejected(
            str(file),
            "rows need the collection's record template (which fields are the id, the text "
            "and the metadata): create the collection with --record-id and --record-text",
        )
        return
    records = {".jsonl": jsonl_records, ".csv": csv_records, ".parquet": parquet_records}[suffix]
    yield from records_to_documents(template, records(file))


def _plain_jsonl(file: Path) -> Iterator[Item]:
    """JSONL in the documents' own shape: {"id", "text", "metadata"} per line."""
    for where, obj in jsonl_records(file):
        if isinstance(obj, Rejected):
            yield obj
            continue
        text, meta = obj.get("text"), obj.get("metadata") or {}
        if not isinstance(text, str):
            yield Rejected(where, "needs an object with a string 'text' field")
        elif not isinstance(meta, dict):
            yield Rejected(where, "'metadata' must be an object")
        elif text.strip():
            lineno = where.rsplit(":", 1)[1]
            yield Document(str(obj.get("id") or f"{file.name}:{lineno}"), text, meta)


def message_documents(
    template: RecordTemplate, messages: Iterator[tuple[str, bytes]]
) -> Iterator[Item]:
    """Stream messages (where, JSON bytes) through the template."""
    yield from records_to_documents(
        template, ((where, decode_record(where, raw)) for where, raw in messages)
    )
