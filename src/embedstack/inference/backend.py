"""The Embedder protocol, the Tokenizer protocol, and a registry of model factories."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from embedstack.errors import NotFound
from embedstack.inference.batching.tokens import Packed
from embedstack.types import ModelSpec


class Tokenizer(Protocol):
    """The model's own tokenizer, as chunking and the batcher need it."""

    @property
    def num_special_tokens(self) -> int:
        """Tokens the model adds around every input (e.g. [CLS] and [SEP])."""
        ...

    def offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of each token of `text`, without special tokens. (A tokenizer may
        also offer `offset_arrays(text) -> (starts, ends)`, the same as two int64 arrays:
        chunking prefers it, as it costs no Python object per token.)"""
        ...

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Token counts including special tokens, not truncated."""
        ...

    def encode_packed(self, texts: Sequence[str]) -> Packed:
        """Token ids including special tokens, truncated to the model's limit (the batcher
        tokenizes each text once, at admission, and hands these to `embed_batch`)."""
        ...


@runtime_checkable
class Closeable(Protocol):
    """An embedder that holds something to release at shutdown."""

    def close(self) -> None: ...


class Embedder(Protocol):
    """A model. `embed_batch` is called from one runner thread at a time."""

    @property
    def spec(self) -> ModelSpec: ...

    @property
    def tokenizer(self) -> Tokenizer: ...

    @property
    def backend(self) -> str:
        """Which engine computes the vectors, e.g. "onnx-fp32" or "auto:openvino-bf16"."""
        ...

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        """float32 array (len(texts), dim); normalized when spec.normalize. `encoded`, when
        given, is `tokenizer.encode_packed(texts)`: backends that run token ids use it instead
        of tokenizing again; the others ignore it."""
        ...


@dataclass(frozen=True)
class ModelEntry:
    name: str
    description: str
    factory: Callable[[], Embedder]


class ModelRegistry:
    """Named model factories; each model is loaded once, on first use."""

    def __init__(self) -> None:
        self._entries: dict[str, ModelEntry] = {}
        self._loaded: dict[str, Embedder] = {}

    def register(self, entry: ModelEntry) -> None:
        self._entries[entry.name] = entry

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> Embedder:
        if name not in self._entries:
            raise NotFound(f"unknown model {name!r}; available models: {', '.join(self.names())}")
        if name not in self._loaded:
            self._loaded[name] = self._entries[name].factory()
        return self._loaded[name]

    def loaded(self) -> dict[str, Embedder]:
        return dict(self._loaded)

    def close(self) -> None:
        """Release what loaded models hold (HTTP clients, background gate threads)."""
        for embedder in self._loaded.values():
            if isinstance(embedder, Closeable):
                embedder.close()
