"""A deliberately slow test model: the hashing embedder plus a fixed sleep per batch and per
text, so tests get a model whose service time is known and far below the HTTP layer's speed."""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from embedstack.inference.batching.tokens import Packed
from embedstack.inference.engines.hashing import HashingEmbedder


class SlowEmbedder(HashingEmbedder):
    """FOR TESTS ONLY: HashingEmbedder vectors after sleeping batch_ms + text_ms per text."""

    def __init__(
        self, name: str = "slow-test", batch_ms: float = 25.0, text_ms: float = 1.0
    ) -> None:
        super().__init__(name=name)
        self._batch_s = batch_ms / 1000.0
        self._text_s = text_ms / 1000.0

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        time.sleep(self._batch_s + self._text_s * len(texts))
        return super().embed_batch(texts, encoded)
