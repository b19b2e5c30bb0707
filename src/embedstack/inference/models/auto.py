"""AutoEmbedder: a model in its fp32 space, served by the fastest backend that passed the gate.

Or by the backend the operator pinned (`model_backends` setting), gated the same way first.

With every candidate's gate report and the speed race cached for this machine, the chosen backend
is built at once. Otherwise the fp32 reference serves right away, and when the first texts reach
the model (not before: a server holding only bring-your-own-vector collections never gates or
races) a background thread gates the candidates and races them (minutes on a busy 2-core
machine), then swaps the winner in; the swap is one reference assignment, seen by the batcher's
runner thread at its next batch. Vectors before and after the swap agree within the gate's
tolerance, so they share the space id. `selection` tells where this stands (SELECTION_STATES).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from embedstack.inference.backend import Embedder, Tokenizer
from embedstack.inference.batching.tokens import Packed
from embedstack.inference.models.race import RaceStopped
from embedstack.types import ModelSpec

if TYPE_CHECKING:
    from embedstack.inference.models.catalog import Catalog

log = logging.getLogger(__name__)
GATE_THREAD_PREFIX = "embedstack-gate-"  # the background selection threads' names
# `AutoEmbedder.selection`: the choice came from the gate cache, the operator pinned it, waiting
# for the first texts, gating and racing in the background, chosen, stopped by close() before
# the choice, or failed (the fp32 reference serves in the last two)
SELECTION_STATES = ("cached", "pinned", "deferred", "running", "chosen", "stopped", "failed")


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
        self._start_lock = threading.Lock()
        self._mode = "auto"
        self._selection = "cached"
        if pinned is not None:
            # the operator's choice: gated now (cached after the first time), refused if it fails
            self._mode = "pinned"
            self._current = catalog.gated_as(model, pinned)
            self._backend = pinned
            self._selection = "pinned"
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
        self._selection = "deferred"  # the gate and the race start with the first texts

    def _start_selection(self) -> None:
        """Start the background gate and race once (called when texts first reach the model)."""
        with self._start_lock:
            if self._selection != "deferred" or self._stop.is_set():
                return
            self._selection = "running"
            self._thread = threading.Thread(
                target=self._select, name=f"{GATE_THREAD_PREFIX}{self._model}", daemon=True
            )
            self._thread.start()

    def _select(self) -> None:
        outcome = "failed"
        try:
            backend = self._catalog.choose(self._model, stop=self._stop)
            if self._stop.is_set():
                outcome = "stopped"
                return
            if backend != self._backend:
                self._current = self._catalog.build_as(self._model, backend)
                self._backend = backend
            outcome = "chosen"
        except RaceStopped:
            outcome = "stopped"
        except Exception:
            log.exception("auto backend selection for %s failed; staying on fp32", self._model)
        finally:
            self._selection = outcome
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

    @property
    def selection(self) -> str:
        """Where the choice of engine stands: one of SELECTION_STATES."""
        return self._selection

    def close(self, timeout: float = 10.0) -> None:
        """Stop a background selection early (it finishes the step it is in: the race waits no
        longer for an idle moment, and a stopped race is not recorded) and wait for it at most
        `timeout` seconds."""
        with self._start_lock:
            self._stop.set()
            thread = self._thread
        if thread is not None:
            thread.join(timeout)

    def wait_selected(self, timeout: float | None = None) -> bool:
        """True once the gated choice is made (at once when it came from the cache; never
        before texts reached the model, which starts the choice)."""
        return self._selected.wait(timeout)

    def embed_batch(self, texts: Sequence[str], encoded: Packed | None = None) -> np.ndarray:
        if self._selection == "deferred":
            self._start_selection()
        current: Embedder = self._current  # every backend of a model shares its tokenizer file
        return current.embed_batch(texts, encoded)
