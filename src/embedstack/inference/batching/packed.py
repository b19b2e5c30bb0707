"""The shared hot loop of the fast backends: tokenize once, sort by length, pad per sub-batch.

`PackedEmbedder` turns texts into vectors around any `Forward` (an ONNX Runtime session, a
torch module): the fast tokenizer encodes the whole batch in one call (Rust, in parallel, GIL
released), token ids go into one flat array, and the texts are cut, shortest first, into
sub-batches bounded by padded tokens, so padding is minimal whatever order they came in. The
padded arrays are built with numpy, not per item. Behind the batcher the texts arrive already
tokenized (`encoded`, done at admission on other threads while the previous batch ran), so the
runner thread only pads and runs the forward pass. Called directly with texts, a large batch is
optionally (`overlap`) tokenized in slices by a helper thread while the previous slice runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Protocol

import numpy as np

from embedstack.inference.batching.tokens import Packed
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.inference.vectors import normalize_rows
from embedstack.types import ModelSpec


class Forward(Protocol):
    """One forward pass: int64 (n, L) ids and mask -> float32 (n, dim) pooled vectors."""

    def __call__(self, ids: np.ndarray, mask: np.ndarray) -> np.ndarray: ...


def plan_batches(lengths: np.ndarray, max_tokens: int, max_size: int) -> list[np.ndarray]:
    """Indices sorted by length, cut into runs whose padded size (n * longest) fits the budget."""
    order = np.argsort(lengths, kind="stable")
    out: list[np.ndarray] = []
    start = 0
    n = len(order)
    while start < n:
        # sorted ascending: the last member is the longest, so a run of k fits when
        # k * lengths[order[start + k - 1]] <= max_tokens
        k_max = min(max_size, n - start)
        run = lengths[order[start : start + k_max]]
        fits = np.arange(1, k_max + 1) * run <= max_tokens
        k = max(1, int(np.argmin(fits)) if not fits.all() else k_max)
        out.append(order[start : start + k])
        start += k
    return out


class PackedEmbedder:
    """An Embedder over a `Forward`: minimal padding, optional overlap, numpy normalization."""

    def __init__(
        self,
        spec: ModelSpec,
        tokenizer: HFTokenizer,
        forward: Forward,
        backend: str,
        *,
        max_batch_tokens: int = 4096,
        max_batch_size: int = 64,
        overlap_above: int | None = None,
    ) -> None:
        self._spec = spec
        self._tokenizer = tokenizer
        self._forward = forward
        self._backend = backend
        self._max_batch_tokens = max_batch_tokens
        self._max_batch_size = max_batch_size
        self._overlap_above = overlap_above
        self._helper: ThreadPoolExecutor | None = None

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._tokenizer

    @property
    def backend(self) -> str:
        """Which engine computes the vectors (e.g. "onnx-fp32", "torch-bf16-autocast")."""
        return self._backend

    def with_spec(self, spec: ModelSpec, backend: str | None = None) -> PackedEmbedder:
        """The same engine answering for another spec (used when the gate allows it)."""
        clone = PackedEmbedder.__new__(PackedEmbedder)
        clone.__dict__.update(self.__dict__)
        clone._spec = spec
        clone._backend = backend or self._backend
        return clone

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        n = len(texts)
        out = np.empty((n, self._spec.dim), dtype=np.float32)
        if n == 0:
            return out
        if encoded is not None:  # tokenized by the batcher, off this thread
            if encoded.size != n:
                raise ValueError(f"{encoded.size} encodings for {n} texts")
            self._run(encoded, out)
        else:
            for offset, packed in self._packed_slices(texts):
                self._run(packed, out[offset : offset + packed.size])
        if self._spec.normalize:
            normalize_rows(out, out=out)
        return out

    def _run(self, packed: Packed, out: np.ndarray) -> None:
        for idx in plan_batches(packed.lengths, self._max_batch_tokens, self._max_batch_size):
            ids, mask = packed.pad(idx, self._tokenizer.pad_id)
            out[idx] = self._forward(ids, mask)

    def _packed_slices(self, texts: Sequence[str]) -> Iterator[tuple[int, Packed]]:
        """The batch tokenized whole, or in slices, the next one while the current runs."""
        limit = self._overlap_above
        if limit is None or len(texts) <= limit:
            yield 0, self._tokenizer.encode_packed(texts)
            return
        if self._helper is None:
            self._helper = ThreadPoolExecutor(1, thread_name_prefix="embedstack-tokenize")
        starts = list(range(0, len(texts), limit))
        encode = self._tokenizer.encode_packed
        pending: Future[Packed] = self._helper.submit(encode, texts[:limit])
        for i, start in enumerate(starts):
            current = pending.result()
            if i + 1 < len(starts):
                nxt = starts[i + 1]
                pending = self._helper.submit(encode, texts[nxt : nxt + limit])
            yield start, current
