"""AutoEmbedder: a model in its fp32 space, served by the fastest backend that passed the gate.

Or by the backend the operator pinned (`model_backends` setting), gated the same way first.

With every candidate's gate report cached for this machine, the chosen backend is built at once.
Otherwise the fp32 reference serves right away and a background thread gates the candidates
(minutes on a busy 2-core machine), then swaps the winner in; the swap is one reference
assignment, seen by the batcher's runner thread at its next batch. Vectors before and after the
swap agree within the gate's tolerance, so they share the space id.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from embedstack.inference.backend import Embedder, Tokenizer
from embedstack.inference.batching.tokens import Packed
from embedstack.types import ModelSpec

if TYPE_CHECKING:
    from embedstack.inference.models.catalog import Catalog

log = logging.getLogger(__name__)
GATE_THREAD_PREFIX = "embedstack-gate-"  # the background selection threads' names


class AutoEmbedder:
    def __init__(
        self, catalog: Catalog, model: str, background: bool = True, pinned: str | None = None
    ) -> None:
        self._catalog = catalog
        self._model = model
        self._spec = catalog.spec(model)
        self._selected = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._mode = "auto"
        if pinned is not None:
            # the operator's choice: gated now (cached after the first time), refused if it fails
            self._mode = "pinned"
            self._current = catalog.gated_as(model, pinned)
            self._backend = pinned
            self._selected.set()
            return
        choice = catalog.cached_auto_choice(model)
        if choice is not None or not background:
            backend = choice if choice is not None else catalog.choose(model)
            self._current = catalog.build_as(model, backend)
            self._backend = backend
            self._selected.set()
            return
        reference = catalog.reference(model).backend
        self._current = catalog.build_as(model, reference)
        self._backend = reference
        self._thread = threading.Thread(
            target=self._select, name=f"{GATE_THREAD_PREFIX}{model}", daemon=True
        )
        self._thread.start()

    def _select(self) -> None:
        try:
            backend = self._catalog.choose(self._model, stop=self._stop)
            if self._stop.is_set():
                return
            if backend != self._backend:
                self._current = self._catalog.build_as(self._model, backend)
                self._backend = backend
        except Exception:
            log.exception("auto backend selection for %s failed; staying on fp32", self._model)
        finally:
            self._selected.set()

    @property
    def spec(self) -> ModelSpec:
        return self._spec

    @property
    def tokenizer(self) -> Tokenizer:
        return self._current.tokenizer

    @property
    def backend(self) -> str:
        return f"{self._mode}:{self._backend}"

    def close(self, timeout: float = 10.0) -> None:
        """Stop a background selection early (it finishes the step it is in: the race waits no
        longer for an idle moment) and wait for it at most `timeout` seconds."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def wait_selected(self, timeout: float | None = None) -> bool:
        """True once the gated choice is made (at once when it came from the cache)."""
        return self._selected.wait(timeout)

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        current: Embedder = self._current  # every backend of a model shares its tokenizer file
        return current.embed_batch(texts, encoded)
