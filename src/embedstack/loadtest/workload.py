"""What the load is made of: the operation mix, the texts (a corpus file or generated), and the
collection the load runs against (created and filled from the corpus when it does not exist)."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import orjson

from embedstack.client import Client, NotFoundError

OPERATIONS = ("query", "ingest", "embed")
TEXT_SUFFIXES = (".txt", ".rst", ".md", ".text")
MIN_PARAGRAPH_CHARS = 40
MAX_PARAGRAPH_CHARS = 2000
QUERY_WORDS = (4, 12)  # a query is a 4-12-word snippet of a paragraph


class WorkloadError(ValueError):
    """A mix or corpus the load generator cannot use; the message names the fix."""


@dataclass(frozen=True)
class Mix:
    """Operation -> share of the requests (shares sum to 1)."""

    shares: tuple[tuple[str, float], ...]

    @classmethod
    def parse(cls, text: str) -> Mix:
        """'query=0.9,ingest=0.1' -> Mix; shares are normalized to sum to 1."""
        shares: dict[str, float] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, eq, value = part.partition("=")
            name = name.strip()
            if name not in OPERATIONS or not eq:
                raise WorkloadError(
                    f"{part!r} in the mix: write OPERATION=SHARE with OPERATION one of "
                    f"{', '.join(OPERATIONS)} (e.g. query=0.9,ingest=0.1)"
                )
            try:
                shares[name] = float(value)
            except ValueError as exc:
                raise WorkloadError(f"{part!r} in the mix: the share must be a number") from exc
            if shares[name] < 0:
                raise WorkloadError(f"{part!r} in the mix: a share cannot be negative")
        total = sum(shares.values())
        if total <= 0:
            raise WorkloadError("the mix has no operation with a positive share")
        return cls(tuple((n, v / total) for n, v in shares.items() if v > 0))

    def schedule(self, n: int, seed: int) -> list[str]:
        """The operation of each of n requests, drawn with the mix's shares (reproducible)."""
        rng = random.Random(seed)
        names = [name for name, _ in self.shares]
        weights = [share for _, share in self.shares]
        return rng.choices(names, weights, k=n)

    def __str__(self) -> str:
        return ",".join(f"{n}={v:g}" for n, v in self.shares)


def load_corpus(path: Path | None, limit: int) -> tuple[list[str], str]:
    """Up to `limit` paragraphs and a description of where they came from. A .jsonl file gives
    each line's "text"; a directory or a text file gives its blank-line-separated paragraphs;
    without a path the texts are generated (a synthetic corpus, said so in the description)."""
    if path is None:
        rng = random.Random(7)
        words = [f"term{i}" for i in range(500)]
        made = [" ".join(rng.choices(words, k=40)) for _ in range(limit)]
        return made, f"synthetic ({limit} generated paragraphs; pass --corpus for real text)"
    if not path.exists():
        raise WorkloadError(f"corpus {path} does not exist")
    texts: list[str] = []
    if path.is_file() and path.suffix == ".jsonl":
        for line in path.read_bytes().splitlines():
            if line.strip():
                row = orjson.loads(line)
                if isinstance(row, dict) and isinstance(row.get("text"), str) and row["text"]:
                    texts.append(row["text"][:MAX_PARAGRAPH_CHARS])
            if len(texts) >= limit:
                break
    else:
        files = [path] if path.is_file() else sorted(
            p for p in path.rglob("*") if p.is_file() and p.name.endswith(TEXT_SUFFIXES)
        )  # fmt: skip
        for f in files:
            texts += _paragraphs(f.read_text(errors="replace"))
            if len(texts) >= limit:
                break
    if not texts:
        raise WorkloadError(
            f"corpus {path} has no texts: give a .jsonl with a 'text' field per line, or text "
            f"files ({', '.join(TEXT_SUFFIXES)}) or a directory of them"
        )
    return texts[:limit], f"{path} ({min(len(texts), limit)} paragraphs)"


def _paragraphs(text: str) -> list[str]:
    out = []
    for block in re.split(r"\n\s*\n", text):
        p = " ".join(block.split())
        if len(p) >= MIN_PARAGRAPH_CHARS:
            out.append(p[:MAX_PARAGRAPH_CHARS])
    return out


def queries_from(texts: Sequence[str], n: int, seed: int) -> list[str]:
    """n short query snippets (4-12 consecutive words) drawn from the corpus paragraphs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        words = rng.choice(texts).split()
        size = min(len(words), rng.randint(*QUERY_WORDS))
        start = rng.randint(0, max(0, len(words) - size))
        out.append(" ".join(words[start : start + size]))
    return out


def prepare_collection(
    client: Client, name: str, texts: Sequence[str], wait_s: float = 1800.0
) -> tuple[int, int, bool]:
    """(documents, chunks, created): the collection `name`, created and filled with `texts`
    (ids corpus-0, corpus-1, ...) when it does not exist, then waited for until indexed."""
    try:
        found = client.get_collection(name)
        return found.documents, found.chunks, False
    except NotFoundError:
        pass
    client.create_collection(name)
    docs = [{"id": f"corpus-{i}", "text": t} for i, t in enumerate(texts)]
    client.add_documents(name, docs, wait=True, timeout=wait_s)
    done = client.get_collection(name)
    return done.documents, done.chunks, True
