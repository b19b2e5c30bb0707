"""Reading documents from files: .txt/.md files (one document each), folders of them, and JSONL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import orjson

from embedstack.errors import InvalidInput
from embedstack.types import Document

TEXT_SUFFIXES = (".txt", ".md", ".rst")


def read_documents(path: Path) -> Iterator[Document]:
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            if file.suffix in TEXT_SUFFIXES or file.suffix == ".jsonl":
                yield from _read_file(file, doc_id=str(file.relative_to(path)))
    elif path.is_file():
        yield from _read_file(path, doc_id=path.name)
    else:
        raise InvalidInput(f"{path} does not exist: give a file or a folder")


def _read_file(file: Path, doc_id: str) -> Iterator[Document]:
    if file.suffix == ".jsonl":
        yield from _read_jsonl(file)
        return
    text = file.read_text(encoding="utf-8", errors="replace")
    if text.strip():
        yield Document(doc_id, text, {"source": str(file)})


def _read_jsonl(file: Path) -> Iterator[Document]:
    with file.open("rb") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                raise InvalidInput(f"{file}:{lineno} is not valid JSON ({exc})") from exc
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise InvalidInput(f"{file}:{lineno} needs an object with a string 'text' field")
            meta = obj.get("metadata") or {}
            if not isinstance(meta, dict):
                raise InvalidInput(f"{file}:{lineno}: 'metadata' must be an object")
            doc_id = str(obj.get("id") or f"{file.name}:{lineno}")
            if obj["text"].strip():
                yield Document(doc_id, obj["text"], meta)
