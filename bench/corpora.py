"""Real text corpora from Debian's packages (python3.11-doc, dict-gcide) for tests and benchmarks.

`python bench/corpora.py pydoc OUT.jsonl` writes the section corpus committed as
tests/data/pydoc_sections.jsonl: each reST section of the Python tutorial and a few library
chapters becomes a document whose metadata carries its title (a natural labeled query set).
"""

from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson

PYDOC = Path("/usr/share/doc/python3.11/html/_sources")
GCIDE = Path("/usr/share/dictd")
UNDERLINE = re.compile(r"^([=\-~^*#+\"'])\1{3,}\s*$")
MARKUP = re.compile(r":[a-z:]+:`~?([^`<]+?)(?:\s*<[^>]+>)?`|``([^`]+)``|\*\*([^*]+)\*\*")


def _clean(text: str) -> str:
    text = MARKUP.sub(lambda m: next(g for g in m.groups() if g), text)
    lines = [ln for ln in text.splitlines() if not ln.strip().startswith((".. ", ":"))]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def pydoc_sections(files: list[str], min_words: int = 40) -> Iterator[dict[str, object]]:
    for rel in files:
        lines = (PYDOC / rel).read_text(encoding="utf-8").splitlines()
        heads = [
            i - 1
            for i in range(1, len(lines))
            if UNDERLINE.match(lines[i]) and lines[i - 1].strip()
        ]
        heads = [h for h in heads if not UNDERLINE.match(lines[h])]
        for n, h in enumerate(heads):
            end = heads[n + 1] if n + 1 < len(heads) else len(lines)
            title = _clean(lines[h])
            body = _clean("\n".join(lines[h + 2 : end]))
            if len(body.split()) >= min_words:
                doc_id = f"{rel.removesuffix('.rst.txt')}#{n}"
                yield {"id": doc_id, "text": body, "metadata": {"file": rel, "title": title}}


def gcide_entries(limit: int | None = None) -> Iterator[tuple[str, str]]:
    """(headword, entry text) from GCIDE's dictd files (apt-get install dict-gcide)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    value = {c: i for i, c in enumerate(alphabet)}

    def b64(s: str) -> int:
        n = 0
        for c in s:
            n = n * 64 + value[c]
        return n

    with gzip.open(GCIDE / "gcide.dict.dz") as f:
        data = f.read()
    count = 0
    for line in (GCIDE / "gcide.index").read_text(encoding="utf-8").splitlines():
        word, off, length = line.split("\t")[:3]
        if word.startswith("00-"):
            continue
        text = data[b64(off) : b64(off) + b64(length)].decode("utf-8", "replace")
        yield word, " ".join(text.split())
        count += 1
        if limit is not None and count >= limit:
            return


PYDOC_FILES = [
    *(f"tutorial/{p.name}" for p in sorted((PYDOC / "tutorial").glob("*.rst.txt"))),
    "library/functions.rst.txt",
    "library/stdtypes.rst.txt",
    "library/asyncio-task.rst.txt",
    "library/sqlite3.rst.txt",
    "library/pathlib.rst.txt",
]

if __name__ == "__main__":
    kind, out = sys.argv[1], Path(sys.argv[2])
    if kind != "pydoc":
        raise SystemExit("usage: corpora.py pydoc OUT.jsonl")
    with out.open("wb") as f:
        for doc in pydoc_sections(PYDOC_FILES):
            f.write(orjson.dumps(doc) + b"\n")
