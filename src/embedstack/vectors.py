"""The one vector normalization, shared by every layer (numpy only, like fsutil).

Cosine vectors are stored, searched and compared as unit rows; engines, the accuracy gate, raw
vectors offered over HTTP and the index all scale rows through `unit_rows`.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def unit_rows(x: Any, out: np.ndarray | None = None) -> np.ndarray:
    """Rows scaled to unit L2 length; an all-zero row stays zero. A floating input keeps its
    precision (float64 stays float64 for exact comparisons), anything else becomes float32;
    `out` receives the result (`out=x` normalizes in place)."""
    arr = np.asarray(x)
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float32)
    norms = np.linalg.norm(arr, axis=-1, keepdims=True)
    return np.divide(arr, np.where(norms > 0, norms, 1), out=out)
