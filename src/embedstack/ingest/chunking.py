"""Pure chunking functions: sentence splitting, token/sentence windows, content hashes.

Chunks are exact slices of the document text, cut at the model tokenizer's token boundaries.
Every chunk's `token_count` is what the model's tokenizer counts for the chunk text (special
tokens included), and it is <= `spec.size`.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from bisect import bisect_left
from collections.abc import Callable, Sequence
from json.encoder import encode_basestring_ascii as _json_ascii
from typing import Any

import numpy as np

from embedstack.errors import InvalidInput
from embedstack.inference.backend import Tokenizer
from embedstack.types import Chunk, ChunkingSpec

MODES = ("tokens", "sentences")
MIN_CONTENT_TOKENS = 8

# Sentence end: terminal punctuation, optional closing quotes/brackets, then whitespace.
# Whether a boundary is real is decided by looking at the next character (capital, digit,
# opening quote/bracket) and the word before (abbreviations, initials).
_SENT_END = re.compile(r"[.!?\u2026]+[\"'\u201d\u2019)\]]*(\s+)")
# CJK full-width terminators need no whitespace after them.
_CJK_END = re.compile(r"[\u3002\uff01\uff1f]+[\u300d\u300f\uff09]*\s*")
# A paragraph break: a blank line.
_PARA = re.compile(r"\n[ \t\r\f\v]*\n\s*")
# A line break before a list item or heading also ends a sentence.
_LIST_BREAK = re.compile(r"\n[ \t]*(?=[-*\u2022#>]\s|\d{1,3}[.)]\s)")
_WORD_BEFORE = re.compile(r"(\w[\w.]*)$")
_OPENERS = "\"'(\u201c\u2018[\u00ab\u00bf\u00a1"
_ABBREVIATIONS = frozenset(
    {
        "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "mt", "vs", "etc", "eg", "ie",
        "cf", "al", "fig", "figs", "no", "nos", "vol", "vols", "ch", "sec", "approx", "dept",
        "inc", "ltd", "co", "corp", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep",
        "sept", "oct", "nov", "dec", "gen", "col", "lt", "sgt", "capt", "rev", "hon", "e",
        "i", "u", "p", "pp", "ed", "eds", "op", "ca",
    }
)  # fmt: skip


def _is_abbreviation(text: str, dot: int) -> bool:
    """Whether the word ending at `text[dot] == "."` is an abbreviation, initial or acronym."""
    before = _WORD_BEFORE.search(text, max(0, dot - 40), dot)
    if before is None:
        return False
    word = before.group(1)
    letters = word.replace(".", "")
    if "." in word and letters.isalpha():  # e.g. / U.S. / p.m.
        return True
    return letters.lower() in _ABBREVIATIONS or (len(letters) == 1 and letters.isupper())


def split_sentences(text: str) -> list[tuple[int, int]]:
    """Character spans of the sentences of `text`, whitespace-trimmed, in order.

    A sentence ends at `.`, `!`, `?` or `…` followed by whitespace and a capital letter, digit
    or opening quote/bracket (not after common abbreviations or single-letter initials), at
    CJK full stops, at blank lines, and at line breaks before list items or headings. Single
    line breaks inside a paragraph (hard-wrapped text) do not end a sentence.
    """
    n = len(text)
    cuts: set[int] = set()
    for m in _SENT_END.finditer(text):
        nxt = m.end()
        if nxt >= n:
            continue
        ch = text[nxt]
        if not (ch.isupper() or ch.isdigit() or ch in _OPENERS):
            continue
        if text[m.start()] == "." and _is_abbreviation(text, m.start()):
            continue
        cuts.add(m.start(1))
    for pattern in (_CJK_END, _PARA, _LIST_BREAK):
        for m in pattern.finditer(text):
            cuts.add(m.end() if pattern is _CJK_END else m.start())
    spans: list[tuple[int, int]] = []
    prev = 0
    for cut in [*sorted(cuts), n]:
        start, end = prev, cut
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if end > start:
            spans.append((start, end))
        prev = cut
    return spans


def content_hash(text: str, metadata: dict[str, Any]) -> str:
    """sha256 hex over a document's text and its metadata as canonical JSON."""
    if not metadata and type(text) is str:  # bulk vectors mostly: the same JSON, built directly
        payload = '{"metadata":{},"text":' + _json_ascii(text) + "}"
        return hashlib.sha256(payload.encode("ascii")).hexdigest()
    try:
        payload = json.dumps(
            {"metadata": metadata, "text": text},
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=True,
            allow_nan=False,
        )
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"metadata must be JSON: string keys, finite numbers, strings, lists, objects ({exc})"
        ) from exc
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def _check_shape(spec: ChunkingSpec, num_special_tokens: int) -> None:
    if spec.mode not in MODES:
        raise InvalidInput(f"unknown chunking mode {spec.mode!r}; use one of: {', '.join(MODES)}")
    for name in ("size", "overlap"):
        value = getattr(spec, name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise InvalidInput(f"chunking {name} must be an integer, got {value!r}")
    minimum = num_special_tokens + MIN_CONTENT_TOKENS
    if spec.size < minimum:
        raise InvalidInput(
            f"chunking size {spec.size} is too small; use at least {minimum} tokens "
            f"({num_special_tokens} special tokens + {MIN_CONTENT_TOKENS} of text)"
        )
    if spec.overlap < 0:
        raise InvalidInput(f"chunking overlap {spec.overlap} is negative; use 0 or more tokens")
    if 2 * spec.overlap >= spec.size or spec.overlap >= spec.size - num_special_tokens:
        limit = min((spec.size - 1) // 2, spec.size - num_special_tokens - 1)
        raise InvalidInput(
            f"chunking overlap {spec.overlap} must be less than half the size {spec.size}; "
            f"use at most {limit}"
        )


def chunking_for_model(
    max_tokens: int, mode: str | None = None, size: int | None = None, overlap: int | None = None
) -> ChunkingSpec:
    """The chunking a collection gets when its request leaves parts out: the default window,
    shrunk to the model's limit, and an overlap in the default proportion to the window.
    Given values are kept as they are (`validate_chunking` judges them)."""
    default = ChunkingSpec()
    if size is None:
        size = min(default.size, max_tokens)
    if overlap is None:
        overlap = default.overlap * size // default.size if isinstance(size, int) else 0
    return ChunkingSpec(mode or default.mode, size, overlap)  # type: ignore[arg-type]


def validate_chunking(
    spec: ChunkingSpec, max_tokens: int, num_special_tokens: int = 2
) -> ChunkingSpec:
    """Return `spec` if it is usable with a model of `max_tokens`, else raise InvalidInput."""
    _check_shape(spec, num_special_tokens)
    if spec.size > max_tokens:
        raise InvalidInput(
            f"chunking size {spec.size} exceeds the model limit of {max_tokens} tokens; "
            f"use a size of at most {max_tokens}"
        )
    return spec


def _token_spans(tokenizer: Tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """The token (starts, ends) of `text` as int64 arrays: from the tokenizer's
    `offset_arrays` when it has one (no Python object per token), else from `offsets`."""
    arrays = getattr(tokenizer, "offset_arrays", None)
    if arrays is not None:
        starts, ends = arrays(text)
        return np.asarray(starts, dtype=np.int64), np.asarray(ends, dtype=np.int64)
    spans = np.asarray(tokenizer.offsets(text), dtype=np.int64).reshape(-1, 2)
    return spans[:, 0], spans[:, 1]


class _Doc:
    """A document's text and its token spans (sanitized: starts and ends non-decreasing)."""

    def __init__(self, text: str, tokenizer: Tokenizer, size: int) -> None:
        self.text = text
        self.tokenizer = tokenizer
        self.size = size
        found, ends = _token_spans(tokenizer, text)
        n = len(text)  # spans clipped to the text (np.clip costs more than this on small arrays)
        starts = np.maximum.accumulate(np.minimum(np.maximum(found, 0), n))
        ends = np.maximum.accumulate(np.maximum(np.minimum(np.maximum(ends, 0), n), starts))
        self.starts: list[int] = starts.tolist()
        self.ends: list[int] = ends.tolist()
        self.n = len(self.starts)

    def span(self, s: int, e: int) -> tuple[int, int]:
        """Character span of tokens [s, e)."""
        return self.starts[s], self.ends[e - 1]

    def counts(self, ranges: Sequence[tuple[int, int]]) -> list[int]:
        """The tokenizer's own counts (special tokens included) of the texts of token ranges.

        A range whose text is the whole document is not tokenized again: the document was
        tokenized whole, so its count is its tokens plus the special ones (most short documents
        are one such chunk)."""
        spans = [self.span(s, e) for s, e in ranges]
        whole = (0, len(self.text))
        todo = [i for i, span in enumerate(spans) if span != whole]
        out = [self.n + self.tokenizer.num_special_tokens] * len(spans)
        if todo:
            found = self.tokenizer.count_tokens([self.text[slice(*spans[i])] for i in todo])
            for i, count in zip(todo, found, strict=True):
                out[i] = count
        return out

    def shrink(self, s: int, e: int, count: int) -> tuple[int, int]:
        """Drop tokens from the end of [s, e) until its text counts <= size tokens."""
        while count > self.size and e - s > 1:
            e = max(s + 1, e - (count - self.size))
            count = self.counts([(s, e)])[0]
        return e, count


def _token_windows(
    doc: _Doc, lo: int, hi: int, budget: int, overlap: int
) -> list[tuple[int, int, int]]:
    """Windows (start, end, count) over tokens [lo, hi): `budget` tokens, `overlap` shared.

    A window's text is re-tokenized on its own, which can give more tokens than it had in
    context when it starts inside a word (a piece such as "##ization" read alone may split
    into more pieces). Such a window is shortened, and the next one starts `overlap` tokens
    before its new end. The plan predicts this from the first word of each window (exact for
    tokenizers that split words apart first, like WordPiece); one batch count checks every
    window, and if a prediction was wrong the rest is redone window by window.
    """
    planned = _plan_windows(doc, lo, hi, budget, overlap)
    out: list[tuple[int, int, int]] = []
    for (s, e), count in zip(planned, doc.counts(planned), strict=True):
        if count > doc.size:
            out.extend(_checked_windows(doc, s, hi, budget, overlap))
            break
        out.append((s, e, count))
    return out


def _plan_windows(doc: _Doc, lo: int, hi: int, budget: int, overlap: int) -> list[tuple[int, int]]:
    special = doc.tokenizer.num_special_tokens
    starts, ends = doc.starts, doc.ends
    out: list[tuple[int, int]] = []
    pos = lo
    while True:
        e = min(pos + budget, hi)
        if pos > 0 and starts[pos] <= ends[pos - 1]:  # glued to the previous token
            r = pos + 1
            while r < e and starts[r] <= ends[r - 1]:
                r += 1
            excess = doc.counts([(pos, r)])[0] - special - (r - pos)
            over = (e - pos) + excess - budget
            if over > 0:
                e = max(pos + 1, e - over)
        out.append((pos, e))
        if e >= hi:
            return out
        pos = max(e - overlap, pos + 1)


def _checked_windows(
    doc: _Doc, lo: int, hi: int, budget: int, overlap: int
) -> list[tuple[int, int, int]]:
    """Like _token_windows without prediction: count batches, shorten, redo from there."""
    out: list[tuple[int, int, int]] = []
    pos, lookahead = lo, 4
    while True:
        proposals: list[tuple[int, int]] = []
        p = pos
        while len(proposals) < lookahead:
            e = min(p + budget, hi)
            proposals.append((p, e))
            if e >= hi:
                break
            p = e - overlap
        for (s, e), count in zip(proposals, doc.counts(proposals), strict=True):
            if count > doc.size:
                e, count = doc.shrink(s, e, count)
                out.append((s, e, count))
                if e >= hi:
                    return out
                pos, lookahead = max(e - overlap, s + 1), 4
                break
            out.append((s, e, count))
            if e >= hi:
                return out
        else:
            pos, lookahead = proposals[-1][1] - overlap, lookahead * 2


def _sentence_ranges(doc: _Doc) -> list[tuple[int, int]]:
    """Token ranges [s, e) of the sentences, partitioning all tokens, in order, none empty."""
    bounds = [0]
    for start, _ in split_sentences(doc.text)[1:]:
        b = bisect_left(doc.starts, start)
        if bounds[-1] < b < doc.n:
            bounds.append(b)
    bounds.append(doc.n)
    return list(itertools.pairwise(bounds))


def _sentence_chunks(
    doc: _Doc, budget: int, overlap: int, windows: Callable[[int, int], list[tuple[int, int, int]]]
) -> list[tuple[int, int, int]]:
    """Greedy packing of whole sentences into ranges of <= budget tokens (see chunk_text)."""
    items: list[tuple[int, int, int]] = []  # (start, end, count or -1 for "to be counted")
    cur: list[tuple[int, int]] = []
    for s, e in _sentence_ranges(doc):
        if e - s > budget:
            if cur:
                items.append((cur[0][0], cur[-1][1], -1))
                cur = []
            items.extend(windows(s, e))
            continue
        if cur and e - cur[0][0] > budget:
            items.append((cur[0][0], cur[-1][1], -1))
            # carry the longest proper suffix of <= overlap tokens that still fits with (s, e)
            k = len(cur)
            while k > 1 and cur[-1][1] - cur[k - 1][0] <= overlap:
                k -= 1
            cur = cur[k:]
            while cur and e - cur[0][0] > budget:
                cur.pop(0)
        cur.append((s, e))
    if cur:
        items.append((cur[0][0], cur[-1][1], -1))
    packed = [(s, e) for s, e, c in items if c < 0]
    counts = iter(doc.counts(packed))
    out: list[tuple[int, int, int]] = []
    for s, e, c in items:
        if c >= 0:
            out.append((s, e, c))
            continue
        count = next(counts)
        if count <= doc.size:
            out.append((s, e, count))
        else:  # the tokenizer disagrees with the offsets: fall back to token windows
            out.extend(windows(s, e))
    return out


def chunk_text(
    document_id: str, text: str, tokenizer: Tokenizer, spec: ChunkingSpec
) -> list[Chunk]:
    """Split `text` into chunks of at most `spec.size` tokens (special tokens included).

    Mode "tokens": windows of `size - num_special_tokens` tokens, consecutive windows sharing
    exactly `overlap` tokens. Mode "sentences": whole sentences packed greedily; the next chunk
    starts with the last sentences of the previous one totalling <= `overlap` tokens; a sentence
    over the budget is split into token windows. Chunk text is the exact slice
    `text[start:end]` from the first token's start to the last token's end. Empty or
    whitespace-only text gives no chunks.
    """
    special = tokenizer.num_special_tokens
    _check_shape(spec, special)
    if not text.strip():
        return []
    doc = _Doc(text, tokenizer, spec.size)
    if doc.n == 0:
        return []
    budget = spec.size - special

    def windows(lo: int, hi: int) -> list[tuple[int, int, int]]:
        return _token_windows(doc, lo, hi, budget, spec.overlap)

    if spec.mode == "tokens":
        ranges = windows(0, doc.n)
    else:
        ranges = _sentence_chunks(doc, budget, spec.overlap, windows)
    return [
        _chunk(document_id, ordinal, text, *doc.span(s, e), count)
        for ordinal, (s, e, count) in enumerate(ranges)
    ]


def _chunk(document_id: str, ordinal: int, text: str, start: int, end: int, count: int) -> Chunk:
    piece = text[start:end]
    return Chunk(
        document_id=document_id,
        ordinal=ordinal,
        text=piece,
        start=start,
        end=end,
        token_count=count,
        hash=hashlib.sha256(piece.encode("utf-8", "surrogatepass")).hexdigest(),
    )


def chunk_texts(
    docs: Sequence[tuple[str, str]], tokenizer: Tokenizer, spec: ChunkingSpec
) -> list[list[Chunk]]:
    """`chunk_text` of each (document_id, text): the same chunks, found in batches.

    A document of at most one window (most documents of a bulk load) is one chunk, the text
    from its first token's start to its last token's end. With a tokenizer that has
    `span_bounds` (token count and that span of many texts in one call), such documents are
    chunked without the per-document token arrays and window planning of `chunk_text`; the
    rest (longer documents, texts the tokenizer cannot bound cheaply) go through `chunk_text`.
    """
    special = tokenizer.num_special_tokens
    _check_shape(spec, special)
    bounds_of = getattr(tokenizer, "span_bounds", None)
    out: list[list[Chunk] | None] = [[] if not text.strip() else None for _, text in docs]
    todo = [k for k, chunks in enumerate(out) if chunks is None]
    if bounds_of is not None and todo:
        budget = spec.size - special
        single: list[tuple[int, int, int, int]] = []  # (doc, start, end, count or -1)
        for k, bounds in zip(todo, bounds_of([docs[k][1] for k in todo]), strict=True):
            if bounds is None or bounds[0] > budget:
                continue
            n, start, end = bounds
            if n == 0:
                out[k] = []
            else:  # a span short of the whole text is counted on its own, as chunk_text does
                whole = (start, end) == (0, len(docs[k][1]))
                single.append((k, start, end, n + special if whole else -1))
        uncounted = [(k, start, end) for k, start, end, count in single if count < 0]
        counted = iter(tokenizer.count_tokens([docs[k][1][a:b] for k, a, b in uncounted]))
        for k, start, end, count in single:
            count = count if count >= 0 else next(counted)
            if count <= spec.size:
                out[k] = [_chunk(docs[k][0], 0, docs[k][1], start, end, count)]
    return [
        chunks if chunks is not None else chunk_text(doc_id, text, tokenizer, spec)
        for (doc_id, text), chunks in zip(docs, out, strict=True)
    ]
