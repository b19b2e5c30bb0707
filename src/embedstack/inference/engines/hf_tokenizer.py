"""A Tokenizer over a Hugging Face `tokenizer.json`, using the fast `tokenizers` library."""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Encoding
from tokenizers import Tokenizer as _HFTok

from embedstack.errors import InvalidInput
from embedstack.inference.batching.tokens import Packed, TokenPacker

# Texts longer than this are encoded in pieces cut at whitespace: one huge `encode` call is
# superlinear in the `tokenizers` library, pieces are linear and run in parallel.
_PIECE_THRESHOLD = 65_536
_PIECE_CHARS = 32_768
_READ_BLOCK = 1 << 20
_CUT_CHARS = (" ", "\n", "\t", "\r")


def file_fingerprint(paths: Iterable[str | Path]) -> str:
    """sha256 hex over the given files, streamed; a directory stands for all files under it.

    Each file contributes its name (relative to a given directory, else its base name), its
    size and its bytes, in the order given (directories walked in sorted order), so renaming,
    reordering or editing any file changes the fingerprint while the folder's location does not.
    """
    digest = hashlib.sha256()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            files = sorted(
                (p for p in path.rglob("*") if p.is_file()), key=lambda p: p.relative_to(path)
            )
            named = [(p.relative_to(path).as_posix(), p) for p in files]
        elif path.is_file():
            named = [(path.name, path)]
        else:
            raise FileNotFoundError(f"cannot fingerprint {path}: no such file or directory")
        for name, file in named:
            digest.update(name.encode("utf-8", "surrogateescape") + b"\0")
            digest.update(file.stat().st_size.to_bytes(8, "little"))
            with file.open("rb") as fh:
                while block := fh.read(_READ_BLOCK):
                    digest.update(block)
    return digest.hexdigest()


def _split_points(text: str) -> list[int]:
    """Cut positions splitting a long text into pieces of about _PIECE_CHARS characters.

    Each cut sits just before a whitespace character, so no word is split and every later
    piece starts with whitespace; for tokenizers that split on whitespace first (BERT's
    WordPiece) the tokens are the same as one call over the whole text.
    """
    cuts = [0]
    n = len(text)
    pos = 0
    while n - pos > _PIECE_CHARS:
        target = pos + _PIECE_CHARS
        lo = pos + _PIECE_CHARS // 2
        cut = max(text.rfind(ws, lo, target) for ws in _CUT_CHARS)
        if cut <= pos:
            cut = target  # no whitespace nearby: cut inside a (huge) word
        cuts.append(cut)
        pos = cut
    cuts.append(n)
    return cuts


class HFTokenizer:
    """The model's own tokenizer (Tokenizer protocol): offsets and counts for chunking, packed
    token ids for the batcher and the ONNX/OpenVINO/torch backends.

    Loaded from `tokenizer.json`; the padding and truncation stored in the file are switched off
    on a private copy so counts and offsets are exact and untruncated.
    """

    def __init__(self, tokenizer_json: Path, max_tokens: int) -> None:
        path = Path(tokenizer_json)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
        tok = _HFTok.from_file(str(path))
        padding = tok.padding
        tok.no_padding()
        tok.no_truncation()
        self._tok = tok
        self._path = path
        self._max_tokens = max_tokens
        if padding is not None:
            self._pad_id = int(padding["pad_id"])
            self._pad_token = str(padding["pad_token"])
        else:
            self._pad_token, self._pad_id = "[PAD]", 0
            for cand in ("[PAD]", "<pad>", "<|pad|>"):
                tid = tok.token_to_id(cand)
                if tid is not None:
                    self._pad_token, self._pad_id = cand, tid
                    break
        with_special = len(tok.encode("", add_special_tokens=True).ids)
        without = len(tok.encode("", add_special_tokens=False).ids)
        self._num_special = with_special - without
        self._packer = TokenPacker(str(path), max_tokens, self._pad_id)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def max_tokens(self) -> int:
        """The model's input limit, special tokens included (`encode_packed` truncates to it)."""
        return self._max_tokens

    @property
    def num_special_tokens(self) -> int:
        return self._num_special

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def encode_packed(self, texts: Sequence[str]) -> Packed:
        """Token ids with special tokens, truncated to `max_tokens`, packed back to back."""
        return self._packer.encode(texts)

    def _encode_pieces(self, text: str) -> list[tuple[int, int]]:
        """Offsets of a long text, encoded piecewise in one parallel batch call."""
        cuts = _split_points(text)
        pieces = [text[a:b] for a, b in itertools.pairwise(cuts)]
        encs = self._encode_batch_raw(pieces, add_special_tokens=False)
        out: list[tuple[int, int]] = []
        for base, enc in zip(cuts, encs, strict=False):
            out.extend([(s + base, e + base) for s, e in enc.offsets])
        return out

    def _encode_batch_raw(self, texts: list[str], add_special_tokens: bool) -> list[Encoding]:
        try:
            return self._tok.encode_batch(texts, add_special_tokens=add_special_tokens)
        except TypeError as exc:  # e.g. lone surrogates, which are not valid Unicode text
            raise InvalidInput(f"text could not be tokenized ({exc}); send valid UTF-8") from exc

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens of `text` (no special tokens), untruncated."""
        if len(text) > _PIECE_THRESHOLD:
            return self._encode_pieces(text)
        (enc,) = self._encode_batch_raw([text], add_special_tokens=False)
        return list(enc.offsets)

    def span_bounds(self, texts: Sequence[str]) -> list[tuple[int, int, int] | None]:
        """Per text: (tokens, first token's start, last token's end), clipped to the text as
        chunking clips offsets; None for a text long enough to be encoded in pieces."""
        out: list[tuple[int, int, int] | None] = [None] * len(texts)
        small = [i for i, t in enumerate(texts) if len(t) <= _PIECE_THRESHOLD]
        encs = self._encode_batch_raw([texts[i] for i in small], add_special_tokens=False)
        for i, enc in zip(small, encs, strict=True):
            offsets, size = enc.offsets, len(texts[i])
            if not offsets:
                out[i] = (0, 0, 0)
                continue
            start = min(max(offsets[0][0], 0), size)
            end = min(max(max(max(a, b) for a, b in offsets), start), size)
            out[i] = (len(offsets), start, end)
        return out

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts including special tokens, not truncated."""
        texts = list(texts)
        counts = [0] * len(texts)
        small = [i for i, t in enumerate(texts) if len(t) <= _PIECE_THRESHOLD]
        if small:
            encs = self._encode_batch_raw([texts[i] for i in small], add_special_tokens=True)
            for i, enc in zip(small, encs, strict=True):
                counts[i] = len(enc.ids)
        for i, t in enumerate(texts):
            if len(t) > _PIECE_THRESHOLD:
                counts[i] = len(self._encode_pieces(t)) + self._num_special
        return counts
