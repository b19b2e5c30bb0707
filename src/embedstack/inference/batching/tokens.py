"""Tokenized batches: every text's token ids back to back, built without per-token Python.

`Packed` is what the batcher hands the model runner (texts are tokenized once, at admission, off
the runner thread), and what the fast backends pad per length-sorted sub-batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer as _HFTok

from embedstack.errors import InvalidInput


@dataclass(frozen=True)
class Packed:
    """A tokenized batch: every text's ids back to back, with start and length per text."""

    flat: np.ndarray  # int64 (total tokens,)
    starts: np.ndarray  # int64 (n,)
    lengths: np.ndarray  # int64 (n,)

    @staticmethod
    def of(flat: np.ndarray, lengths: np.ndarray) -> Packed:
        """Ids back to back and each text's length; the starts are computed."""
        return Packed(flat, exclusive_cumsum(lengths), lengths)

    @property
    def size(self) -> int:
        return len(self.lengths)

    def take(self, idx: np.ndarray | Sequence[int]) -> Packed:
        """The texts `idx`, in that order, as a new packed batch (one numpy gather)."""
        idx = np.asarray(idx, dtype=np.int64)
        lengths = self.lengths[idx]
        starts = exclusive_cumsum(lengths)
        total = int(lengths.sum())
        pos = np.repeat(self.starts[idx] - starts, lengths) + np.arange(total, dtype=np.int64)
        return Packed(self.flat[pos], starts, lengths)

    @staticmethod
    def concat(parts: Sequence[Packed]) -> Packed:
        """The batches one after another."""
        if len(parts) == 1:
            return parts[0]
        lengths = np.concatenate([p.lengths for p in parts])
        return Packed.of(np.concatenate([p.flat for p in parts]), lengths)

    def pad(self, idx: np.ndarray, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
        """(ids, mask) of the texts `idx`, padded to their longest member."""
        lengths = self.lengths[idx]
        width = int(lengths.max()) if len(idx) else 0
        cols = np.arange(width, dtype=np.int64)
        mask = cols[None, :] < lengths[:, None]
        pos = np.where(mask, self.starts[idx][:, None] + cols[None, :], 0)
        ids = (
            np.where(mask, self.flat[pos], pad_id) if self.flat.size else np.full(pos.shape, pad_id)
        )
        return ids.astype(np.int64, copy=False), mask.astype(np.int64)


class TokenPacker:
    """The model's fast tokenizer with truncation and no padding, encoding into `Packed`."""

    def __init__(self, tokenizer_json: str, max_tokens: int, pad_id: int = 0) -> None:
        tok = _HFTok.from_file(tokenizer_json)
        tok.no_padding()
        tok.enable_truncation(max_tokens)
        self._tok = tok
        self.pad_id = pad_id

    def encode(self, texts: Sequence[str]) -> Packed:
        try:
            encs = self._tok.encode_batch(list(texts), add_special_tokens=True)
        except TypeError as exc:  # e.g. lone surrogates
            raise InvalidInput(f"text could not be tokenized ({exc}); send valid UTF-8") from exc
        ids = [e.ids for e in encs]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        total = int(lengths.sum())
        flat = np.fromiter(itertools.chain.from_iterable(ids), dtype=np.int64, count=total)
        return Packed.of(flat, lengths)


def exclusive_cumsum(lengths: np.ndarray) -> np.ndarray:
    """Where each of `lengths` starts when laid back to back (int64, first 0)."""
    starts = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths) > 1:
        np.cumsum(lengths[:-1], out=starts[1:])
    return starts
