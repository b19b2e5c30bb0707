"""The packed hot loop: length-sorted token-budget sub-batches, vectorized padding, overlap."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer

from embedstack.inference.batching.packed import PackedEmbedder, plan_batches
from embedstack.inference.batching.tokens import Packed, TokenPacker
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.inference.models.bundled import L6, bundled_spec

os.environ.setdefault("HF_HUB_OFFLINE", "1")
DATA = Path(__file__).resolve().parents[1] / "data" / "pydoc_sections.jsonl"
TEXTS = [
    "a",
    "Sentence embeddings map text to vectors.",
    "The quick brown fox jumps over the lazy dog " * 40,
    "Tokenization runs in Rust and releases the GIL.",
    "short",
    "x " * 500,
]


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=200),
    st.integers(1, 5000),
    st.integers(1, 70),
)
def test_plan_covers_every_text_once_within_budget(
    lengths: list[int], budget: int, size: int
) -> None:
    arr = np.array(lengths, dtype=np.int64)
    plan = plan_batches(arr, budget, size)
    flat = np.concatenate(plan)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert np.all(np.diff(arr[flat]) >= 0)  # shortest first: padding only within neighbours
    for idx in plan:
        assert 1 <= len(idx) <= size
        assert len(idx) == 1 or len(idx) * arr[idx].max() <= budget


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30000), max_size=12), min_size=1, max_size=20), st.data())
def test_take_and_concat_keep_every_texts_ids(rows: list[list[int]], data: st.DataObject) -> None:
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    packed = Packed.of(np.array([t for r in rows for t in r], dtype=np.int64), lengths)
    picks = data.draw(st.lists(st.integers(0, len(rows) - 1), max_size=30))
    split = data.draw(st.integers(0, len(picks)))
    parts = [packed.take(picks[:split]), packed.take(picks[split:])]
    joined = Packed.concat(parts)
    assert joined.size == len(picks)
    for i, row in enumerate(picks):
        got = joined.flat[joined.starts[i] : joined.starts[i] + joined.lengths[i]]
        assert got.tolist() == rows[row]


def test_batcher_encodings_match_the_engines_own_tokenization() -> None:
    hf = HFTokenizer(L6.tokenizer_json(), 256)
    mine = hf.encode_packed(TEXTS)
    theirs = TokenPacker(str(L6.tokenizer_json()), 256).encode(TEXTS)
    np.testing.assert_array_equal(mine.flat, theirs.flat)
    np.testing.assert_array_equal(mine.lengths, theirs.lengths)
    assert hf.count_tokens(TEXTS[:2]) == mine.lengths[:2].tolist()  # untruncated == truncated


def test_pad_matches_the_padded_tokenizer() -> None:
    padded = Tokenizer.from_file(str(L6.tokenizer_json()))  # the library's own padding
    padded.enable_truncation(256)
    padded.enable_padding(pad_id=0, pad_token="[PAD]")
    packed = TokenPacker(str(L6.tokenizer_json()), 256).encode(TEXTS)
    idx = np.array([4, 0, 1, 3])
    ids, mask = packed.pad(idx, 0)
    encs = padded.encode_batch([TEXTS[i] for i in idx])
    want_ids = np.array([e.ids for e in encs], dtype=np.int64)
    want_mask = np.array([e.attention_mask for e in encs], dtype=np.int64)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(mask, want_mask)
    assert packed.lengths.max() == 256  # truncated at max_tokens, special tokens included


class _SumForward:
    """Deterministic fake model: a 4-d vector from the real ids and the length of each row."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, int]] = []

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        self.shapes.append(ids.shape)
        real = (ids * mask).astype(np.float64)
        n = mask.sum(1)
        return np.stack([real.sum(1) / n, n, real.max(1), np.ones(len(n))], 1).astype(np.float32)


def _embedder(forward: _SumForward, overlap_above: int | None, budget: int = 512) -> PackedEmbedder:
    return PackedEmbedder(
        replace(bundled_spec(L6), dim=4), HFTokenizer(L6.tokenizer_json(), 256), forward, "fake",
        max_batch_tokens=budget, max_batch_size=8, overlap_above=overlap_above,
    )  # fmt: skip


def test_vectors_come_back_in_input_order_with_little_padding() -> None:
    texts = TEXTS * 7
    fwd = _SumForward()
    out = _embedder(fwd, None).embed_batch(texts)
    single = _embedder(_SumForward(), None)
    alone = np.concatenate([single.embed_batch([t]) for t in texts])
    np.testing.assert_allclose(out, alone, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-6)
    padded = sum(a * b for a, b in fwd.shapes)
    real = int(TokenPacker(str(L6.tokenizer_json()), 256).encode(texts).lengths.sum())
    assert padded <= 1.05 * real  # length-sorted sub-batches: almost no padding


def test_overlapped_tokenization_gives_the_same_vectors() -> None:
    texts = TEXTS * 9
    plain = _embedder(_SumForward(), None).embed_batch(texts)
    overlapped = _embedder(_SumForward(), 7).embed_batch(texts)
    np.testing.assert_array_equal(plain, overlapped)
    assert _embedder(_SumForward(), None).embed_batch([]).shape == (0, 4)
