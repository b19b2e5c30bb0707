"""A deterministic feature-hashing embedder, FOR FAST UNIT TESTS ONLY (it has no semantics)."""

from __future__ import annotations

import hashlib
import re
import zlib
from collections.abc import Sequence

import numpy as np

from embedstack.inference.batching.tokens import Packed, exclusive_cumsum
from embedstack.types import ModelSpec
from embedstack.vectors import unit_rows

_TOKEN = re.compile(r"\w+|[^\w\s]")
# "\x1f" counts as whitespace for `re`, so it never occurs inside a token: a safe joiner.
_SEP = "\x1f"
_SEP_B = b"\x1f"
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BIGRAM_WEIGHT = 0.5
_BLOCK = 1024  # texts per vectorized block: keeps the scratch arrays in cache
_ALGORITHM = "hashing-v1:unigram+bigram:crc32+splitmix64"
_SPECIAL = -1  # the id of the two notional special tokens around each text


_SPACE, _WORD, _OTHER = 0, 1, 2
_WORD_CHAR = re.compile(r"\w")
_SPACE_CHAR = re.compile(r"\s")


def _kind(ch: str) -> int:
    """The class of one character under `_TOKEN`: word (\\w), space (\\s) or other."""
    if _WORD_CHAR.match(ch):
        return _WORD
    return _SPACE if _SPACE_CHAR.match(ch) else _OTHER


_ASCII_KIND = np.array([_kind(chr(c)) for c in range(128)], dtype=np.int8)


def _char_kinds(codes: np.ndarray) -> np.ndarray:
    """The class of every character (`codes`: code points), each distinct non-ASCII character
    classed once."""
    kind = np.empty(len(codes), dtype=np.int8)
    ascii_ = codes < 128
    kind[ascii_] = _ASCII_KIND[codes[ascii_]]
    wide = np.flatnonzero(~ascii_)
    uniq, inverse = np.unique(codes[wide], return_inverse=True)
    kind[wide] = np.array([_kind(chr(int(c))) for c in uniq], dtype=np.int8)[inverse]
    return kind


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on uint64 (wrapping arithmetic): stable across runs and platforms."""
    h = h ^ (h >> np.uint64(30))
    h = h * _MIX1
    h = h ^ (h >> np.uint64(27))
    h = h * _MIX2
    return h ^ (h >> np.uint64(31))


class RegexTokenizer:
    """Words and punctuation (`\\w+|[^\\w\\s]`), with two notional special tokens."""

    def __init__(self, max_tokens: int = 512) -> None:
        self._max_tokens = max_tokens

    @property
    def max_tokens(self) -> int:
        return self._max_tokens

    @property
    def num_special_tokens(self) -> int:
        return 2

    def offsets(self, text: str) -> list[tuple[int, int]]:
        return [m.span() for m in _TOKEN.finditer(text)]

    def offset_arrays(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """`offsets(text)` as two int64 arrays (starts, ends), found without a Python step per
        token: each character is classed (word, space, other) through a table, and a token
        starts where a word run begins or at any other character."""
        try:
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        except UnicodeEncodeError:  # a lone surrogate: the regex handles it
            spans = np.asarray(self.offsets(text), dtype=np.int64).reshape(-1, 2)
            return spans[:, 0].copy(), spans[:, 1].copy()
        if len(codes) == 0 or int(codes.max()) < 128:
            kind = _ASCII_KIND[codes]
        else:
            kind = _char_kinds(codes)
        # padded with a space at both ends: a word run starts where a word follows a non-word
        padded = np.empty(len(kind) + 2, dtype=np.int8)
        padded[0] = padded[-1] = _SPACE
        padded[1:-1] = kind
        word = padded == _WORD
        other = padded[1:-1] == _OTHER
        starts = np.flatnonzero(other | (word[1:-1] & ~word[:-2]))
        ends = np.flatnonzero(other | (word[1:-1] & ~word[2:])) + 1
        return starts, ends

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        return [len(_TOKEN.findall(t)) + 2 for t in texts]

    def span_bounds(self, texts: Sequence[str]) -> list[tuple[int, int, int] | None]:
        """Per text: (tokens, first token's start, last token's end). Every character outside
        `\\s` is in a token, so the span is the text without surrounding whitespace (`\\s` and
        str.strip agree on what whitespace is)."""
        findall = _TOKEN.findall
        return [(len(findall(t)), len(t) - len(t.lstrip()), len(t.rstrip())) for t in texts]

    def encode_packed(self, texts: Sequence[str]) -> Packed:
        """Each text's tokens, truncated like a model's, as ids: the CRC-32 of the lowercased
        token, between two notional special tokens (id -1). The embedder hashes these ids, so a
        text the batcher tokenized at admission is never tokenized again."""
        keep = max(0, self._max_tokens - 2)
        findall = _TOKEN.findall
        flat: list[str] = []
        counts: list[int] = []
        for text in texts:
            toks = findall(text)
            if len(toks) > keep:
                toks = toks[:keep]
            counts.append(len(toks))
            flat.extend(toks)
        lengths = np.asarray(counts, dtype=np.int64) + 2
        packed = Packed.of(np.full(int(lengths.sum()), _SPECIAL, dtype=np.int64), lengths)
        if flat:
            joined = _SEP.join(flat).lower().encode("utf-8", "surrogatepass")
            crc = np.fromiter(map(zlib.crc32, joined.split(_SEP_B)), np.int64, count=len(flat))
            packed.flat[_token_positions(packed)] = crc
        return packed

    def tokens(self, text: str) -> list[str]:
        """The (original-case) tokens of `text`."""
        return _TOKEN.findall(text)


class HashingEmbedder:
    """Signed feature hashing of lowercased unigrams and bigrams, L2-normalized, float32.

    FOR FAST UNIT TESTS ONLY: deterministic, dependency-free and fast (vectorized over the
    batch), texts sharing words get higher cosine than unrelated texts, but it knows nothing
    about meaning. Inputs are truncated to `max_tokens` like a real model; a text with no tokens
    embeds to the unit vector e0.
    """

    def __init__(
        self, dim: int = 384, name: str = "hashing-test", max_tokens: int = 512, seed: int = 0
    ) -> None:
        """`seed` != 0 permutes the output coordinates: a second, incompatible space."""
        if dim < 2:
            raise ValueError(f"dim must be >= 2, got {dim}")
        self._dim = dim
        self._perm = np.random.default_rng(seed).permutation(dim) if seed else None
        self._tokenizer = RegexTokenizer(max_tokens)
        tag = f"{_ALGORITHM}|{name}|{dim}" + (f"|seed={seed}" if seed else "")
        fingerprint = hashlib.sha256(tag.encode()).hexdigest()
        self._spec = ModelSpec(
            name=name,
            revision="1",
            fingerprint=fingerprint,
            dim=dim,
            metric="cosine",
            max_tokens=max_tokens,
            pooling="hashing",
            normalize=True,
            tokenizer="regex",
            precision="float32",
        )

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def tokenizer(self) -> RegexTokenizer:
        return self._tokenizer

    @property
    def backend(self) -> str:
        return "hashing"

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        """float32 array (len(texts), dim), each row L2-normalized. `encoded`: this tokenizer's
        `encode_packed(texts)` (the batcher's, made at admission), else the texts are
        tokenized here."""
        if encoded is None or encoded.size != len(texts):
            encoded = self._tokenizer.encode_packed(texts)
        out = np.empty((len(texts), self._dim), dtype=np.float32)
        for lo in range(0, len(texts), _BLOCK):
            hi = min(lo + _BLOCK, len(texts))
            block = encoded if hi - lo == encoded.size else encoded.take(np.arange(lo, hi))
            out[lo:hi] = self._embed_block(block)
        return out if self._perm is None else out[:, self._perm]

    def _embed_block(self, block: Packed) -> np.ndarray:
        n, dim = block.size, self._dim
        lens = block.lengths - 2
        raw = block.flat[_token_positions(block)].astype(np.uint64)
        if len(raw):
            rows = np.repeat(np.arange(n, dtype=np.int64), lens)
            same = rows[:-1] == rows[1:]
            hashes = np.concatenate(
                [_mix(raw + _GOLDEN), _mix((raw[:-1] * _GOLDEN + raw[1:]) ^ _MIX2)[same]]
            )
            weights = np.ones(len(hashes))
            weights[len(raw) :] = _BIGRAM_WEIGHT
            weights[(hashes >> np.uint64(63)) == 1] *= -1.0
            buckets = (hashes % np.uint64(dim)).astype(np.int64)
            keys = np.concatenate([rows, rows[:-1][same]]) * dim + buckets
            vecs: np.ndarray = np.bincount(keys, weights=weights, minlength=n * dim)
            vecs = vecs.reshape(n, dim).astype(np.float64, copy=False)
        else:
            vecs = np.zeros((n, dim), dtype=np.float64)
        vecs[~vecs.any(axis=1), 0] = 1.0  # a text with no tokens: e0
        return unit_rows(vecs, out=vecs)


def _token_positions(packed: Packed) -> np.ndarray:
    """Where the real tokens sit in `packed.flat`: every position but each text's first and
    last (the two special tokens)."""
    lens = packed.lengths - 2
    total = int(lens.sum())
    firsts = np.repeat(packed.starts + 1 - exclusive_cumsum(lens), lens)
    return firsts + np.arange(total, dtype=np.int64)
