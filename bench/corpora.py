"""Real text corpora from Debian's packages (python3.11-doc, dict-gcide) for tests and benchmarks.

`python bench/corpora.py pydoc OUT.jsonl` writes the section corpus committed as
tests/data/pydoc_sections.jsonl: each reST section of the Python tutorial and a few library
chapters becomes a document whose metadata carries its title (a natural labeled query set).

`python bench/corpora.py gate OUT.jsonl` writes the accuracy gate's sample, shipped as
src/embedstack/inference/models/data/gate_sample.jsonl: sections of the tutorial, library reference,
language reference, HOWTOs and FAQs whose title is unique and specific (two words or more), as
{"query": title, "passages": its first paragraphs}, evenly spread over the docs.

`python bench/corpora.py calibration OUT.jsonl` writes the int8 calibration texts, shipped as
src/embedstack/inference/models/data/calibration.jsonl: paragraphs from other parts of the docs (the
C API, extending, using, installing, distributing), so no backend is calibrated on the texts
that gate it.
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

GATE_DIRS = ("tutorial", "library", "reference", "howto", "faq")
GATE_QUERIES = 520  # ~1,500 texts: recall@10 moves ~0.1 point per query, not 0.5
GATE_PASSAGES = 2  # first paragraphs of a section
GATE_CHARS = 600  # a passage is cut at a sentence end near this length


def _paragraphs(body: str) -> list[str]:
    out = []
    for para in re.split(r"\n\s*\n", body):
        text = " ".join(para.split())
        if len(text.split()) < 12 or text.startswith((">>>", "$", "{", "[", "(")):
            continue
        if len(text) > GATE_CHARS:
            cut = text.rfind(". ", 0, GATE_CHARS)
            text = text[: cut + 1] if cut > GATE_CHARS // 3 else text[:GATE_CHARS]
        out.append(text)
    return out


def gate_sample() -> list[dict[str, object]]:
    files = [
        str(p.relative_to(PYDOC)) for d in GATE_DIRS for p in sorted((PYDOC / d).glob("*.rst.txt"))
    ]
    rows: list[dict[str, object]] = []
    seen: dict[str, int] = {}
    for doc in pydoc_sections(files, min_words=25):
        title = str(doc["metadata"]["title"]).strip(" :.")  # type: ignore[index]
        key = title.lower()
        seen[key] = seen.get(key, 0) + 1
        passages = _paragraphs(str(doc["text"]))[:GATE_PASSAGES]
        if len(title.split()) >= 2 and passages and len(title) <= 80:
            rows.append({"id": doc["id"], "query": title, "passages": passages})
    unique = [r for r in rows if seen[str(r["query"]).lower()] == 1]
    step = len(unique) / GATE_QUERIES
    return [unique[int(i * step)] for i in range(min(GATE_QUERIES, len(unique)))]


CALIBRATION_DIRS = ("c-api", "extending", "using", "installing", "distributing")
CALIBRATION_TEXTS = 200


def calibration_texts() -> list[dict[str, object]]:
    """Paragraphs disjoint from the gate sample's parts of the docs, evenly spread."""
    files = [
        str(p.relative_to(PYDOC))
        for d in CALIBRATION_DIRS
        for p in sorted((PYDOC / d).glob("*.rst.txt"))
    ]
    texts = [
        t for doc in pydoc_sections(files, min_words=25) for t in _paragraphs(str(doc["text"]))
    ]
    step = len(texts) / CALIBRATION_TEXTS
    return [{"text": texts[int(i * step)]} for i in range(min(CALIBRATION_TEXTS, len(texts)))]


if __name__ == "__main__":
    from common import preflight

    kind, out = sys.argv[1], Path(sys.argv[2])
    preflight(corpora=("pydoc",))
    if kind == "pydoc":
        docs = list(pydoc_sections(PYDOC_FILES))
    elif kind == "gate":
        docs = gate_sample()
    elif kind == "calibration":
        docs = calibration_texts()
    else:
        raise SystemExit("usage: corpora.py pydoc|gate|calibration OUT.jsonl")
    with out.open("wb") as f:
        for doc in docs:
            f.write(orjson.dumps(doc) + b"\n")
    print(f"{len(docs)} rows -> {out}")
