"""A sentence-transformers model folder on sentence-transformers itself (the fp32 reference)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedstack.inference.batching.tokens import Packed
from embedstack.inference.engines.hf_tokenizer import HFTokenizer
from embedstack.types import ModelSpec


class SentenceTransformerEmbedder:
    """A local sentence-transformers model folder computing the space `spec` describes."""

    def __init__(self, spec: ModelSpec, path: Path, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device=device, local_files_only=True)
        self._model.max_seq_length = spec.max_tokens
        dim = self._model.get_embedding_dimension()
        if dim != spec.dim:
            raise ValueError(f"model at {path} makes {dim}-dim vectors, its spec says {spec.dim}")
        self._tokenizer = HFTokenizer(path / "tokenizer.json", spec.max_tokens)
        self._spec = spec

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def tokenizer(self) -> HFTokenizer:
        return self._tokenizer

    @property
    def backend(self) -> str:
        return "sentence-transformers"

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        # the library's own loop and default batch (it sorts the call's texts by length and pads
        # per batch of 32): this backend is the plain reference, so it runs as users run it
        out = self._model.encode(
            list(texts),
            batch_size=32,
            normalize_embeddings=self._spec.normalize,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)
