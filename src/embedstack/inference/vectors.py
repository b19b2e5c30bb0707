"""The one row normalization of inference: every engine and the gate use it."""

from __future__ import annotations

import numpy as np


def normalize_rows(vectors: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Each row scaled to unit L2 norm (an all-zero row stays zero), in `out` when given
    (`out=vectors` normalizes in place)."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, np.maximum(norms, 1e-12), out=out)
