"""HashingEmbedder: the deterministic test-only embedder and its regex tokenizer."""

from __future__ import annotations

import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from embedstack.inference.backend import Embedder, Tokenizer
from embedstack.inference.engines.hashing import HashingEmbedder, RegexTokenizer


def cos(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b))


def test_shape_dtype_and_norm() -> None:
    emb: Embedder = HashingEmbedder()
    out = emb.embed_batch(["hello world", "The quick brown fox.", "!!!"])
    assert out.shape == (3, 384)
    assert out.dtype == np.float32
    assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    assert emb.embed_batch([]).shape == (0, 384)


def test_empty_text_is_e0() -> None:
    out = HashingEmbedder(dim=16).embed_batch(["", "   \n\t"])
    e0 = np.zeros(16, dtype=np.float32)
    e0[0] = 1.0
    assert np.array_equal(out[0], e0) and np.array_equal(out[1], e0)


def test_golden_vector_is_stable() -> None:
    """Guards the embedding space: any change here must come with a new fingerprint."""
    v = HashingEmbedder().embed_batch(["The quick brown fox."])[0]
    nz = np.nonzero(v)[0]
    assert nz.tolist() == [44, 107, 108, 120, 130, 154, 204, 285, 342]
    expected = [-0.408248, 0.204124, 0.408248, -0.204124, -0.204124, 0.408248, 0.408248]
    assert np.allclose(v[nz][:7], expected, atol=1e-5)


def test_deterministic_and_batch_independent() -> None:
    texts = [f"document number {i} about topic {i % 7}" for i in range(1500)]
    texts[3] = ""
    a = HashingEmbedder().embed_batch(texts)
    b = HashingEmbedder().embed_batch(texts[::-1])[::-1]
    singles = np.vstack([HashingEmbedder().embed_batch([t]) for t in texts[:50]])
    assert np.array_equal(a, b)
    assert np.array_equal(a[:50], singles)


def test_case_insensitive() -> None:
    out = HashingEmbedder().embed_batch(["Hello World", "hello world", "HELLO WORLD"])
    assert np.allclose(out[0], out[1]) and np.allclose(out[1], out[2])


def test_similar_texts_score_higher_than_unrelated() -> None:
    out = HashingEmbedder().embed_batch(
        [
            "the cat sat on the mat",
            "a cat sat on a mat",
            "quantum chromodynamics describes the strong interaction",
            "Vector databases index embeddings for fast nearest neighbour search.",
            "Embeddings are indexed by vector databases for nearest neighbour search.",
            "My grandmother bakes apple pie every Sunday.",
        ]
    )
    assert cos(out[0], out[1]) > cos(out[0], out[2]) + 0.2
    assert cos(out[3], out[4]) > cos(out[3], out[5]) + 0.2
    assert cos(out[3], out[4]) > 0.5


def test_word_order_matters_through_bigrams() -> None:
    out = HashingEmbedder().embed_batch(["dog bites man", "man bites dog", "dog bites man"])
    assert cos(out[0], out[2]) == pytest.approx(1.0)
    assert cos(out[0], out[1]) < 0.999


def test_truncates_like_a_model() -> None:
    emb = HashingEmbedder(max_tokens=12)
    words = [f"w{i}" for i in range(30)]
    out = emb.embed_batch([" ".join(words), " ".join(words[:10]), " ".join(words[:9])])
    assert np.array_equal(out[0], out[1])  # 12 tokens - 2 specials = 10 words kept
    assert not np.array_equal(out[1], out[2])


def test_spec() -> None:
    spec = HashingEmbedder().spec
    assert spec.name == "hashing-test" and spec.revision == "1"
    assert spec.dim == 384 and spec.metric == "cosine"
    assert spec.max_tokens == 512 and spec.normalize
    assert spec.fingerprint == HashingEmbedder().spec.fingerprint
    assert spec.fingerprint != HashingEmbedder(dim=128).spec.fingerprint
    assert spec.fingerprint != HashingEmbedder(name="other").spec.fingerprint
    assert spec.space_id != HashingEmbedder(dim=128).spec.space_id
    with pytest.raises(ValueError):
        HashingEmbedder(dim=1)


def test_tokenizer() -> None:
    tok: Tokenizer = HashingEmbedder().tokenizer
    text = "Hello, world! It's 2024."
    offs = tok.offsets(text)
    assert [text[s:e] for s, e in offs] == [
        "Hello", ",", "world", "!", "It", "'", "s", "2024", ".",
    ]  # fmt: skip
    assert tok.num_special_tokens == 2
    assert tok.count_tokens([text, "", "  "]) == [11, 2, 2]


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_tokenizer_offsets_cover_every_non_space(text: str) -> None:
    tok = RegexTokenizer()
    offs = tok.offsets(text)
    covered = {i for s, e in offs for i in range(s, e)}
    assert covered == {i for i, ch in enumerate(text) if not ch.isspace()}
    assert tok.count_tokens([text]) == [len(offs) + 2]


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=60), max_size=8))
def test_any_text_embeds_to_unit_vectors(texts: list[str]) -> None:
    out = HashingEmbedder(dim=32).embed_batch(texts)
    assert out.shape == (len(texts), 32)
    if texts:
        assert np.allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_throughput_is_not_pathological() -> None:
    """Designed for >= 20k short texts/s on one core; asserts a 10x margin to avoid flakes."""
    texts = [f"short text number {i} about embeddings and search." for i in range(10_000)]
    emb = HashingEmbedder()
    t0 = time.perf_counter()
    for lo in range(0, len(texts), 256):
        emb.embed_batch(texts[lo : lo + 256])
    assert time.perf_counter() - t0 < 5.0


@settings(max_examples=300, deadline=None)
@given(
    st.text(
        alphabet=st.sampled_from(
            list("ab Z_9.,;\n\t\u00e9\u4e2d\u3002\u00a0\u2019\u0661\u00b2!\u200b\U0001f600\ud800")
        ),
        max_size=60,
    )
)
def test_offset_arrays_are_the_regex_offsets(text: str) -> None:
    tok = RegexTokenizer()
    starts, ends = tok.offset_arrays(text)
    assert starts.dtype == ends.dtype == np.int64
    assert list(zip(starts.tolist(), ends.tolist(), strict=True)) == tok.offsets(text)


def test_embeds_the_batchers_tokens_without_tokenizing_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The batcher tokenizes at admission (encode_packed) and hands the ids to embed_batch,
    taken and concatenated per batch: the vectors are those of the texts, and the embedder
    does not tokenize them a second time."""
    emb = HashingEmbedder(max_tokens=12)
    texts = ["The quick brown fox.", "", "w " * 40, "dog bites man", "Ünïcode ß straße!"] * 300
    want = emb.embed_batch(texts)
    encoded = emb.tokenizer.encode_packed(texts)
    assert encoded.lengths.tolist()[:3] == [7, 2, 12]  # specials counted, truncated like a model
    order = np.random.default_rng(0).permutation(len(texts))
    regathered = type(encoded).concat([encoded.take(order[:700]), encoded.take(order[700:])])

    def refuse(_: object) -> None:
        raise AssertionError("embed_batch tokenized again")

    monkeypatch.setattr(emb.tokenizer, "encode_packed", refuse)
    got = emb.embed_batch([texts[i] for i in order], regathered)
    assert np.array_equal(got, want[order])
