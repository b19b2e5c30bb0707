"""What a trained index knows about its training, shared by the faiss and ScaNN wrappers: the
size it trained on, what was added since, its resolved shape, its knobs and the recall gate's
verdict. Each wrapper owns one `TrainingState`; this module decides when to retrain, runs the
gate and reads and writes the state's part of index.json.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embedstack.index.gate import GateResult, SearchFn, tune

log = logging.getLogger(__name__)


@dataclass
class TrainingState:
    label: str  # the index type, for log messages
    retrain_growth: float = 0.0  # params["retrain_growth"]: 0 = never retrain
    recall_floor: float = 0.0  # params["recall_floor"]: 0 = no gate
    trained_n: int = 0  # live vectors at training time; 0 while untrained
    added: int = 0  # vectors added since training
    shape: dict[str, int] = field(default_factory=dict)  # structural params, auto resolved
    knobs: dict[str, int] = field(default_factory=dict)  # search knobs in effect
    gate: dict[str, Any] = field(default_factory=dict)  # the gate's last result ({} if none)

    @classmethod
    def for_params(cls, label: str, params: dict[str, Any]) -> TrainingState:
        return cls(
            label,
            retrain_growth=float(params.get("retrain_growth", 0.0)),
            recall_floor=float(params.get("recall_floor", 0.0)),
        )

    def trained_on(self, n: int, shape: dict[str, int], knobs: dict[str, int]) -> None:
        """Record a training on `n` vectors (the gate has not run yet)."""
        self.trained_n, self.added = n, 0
        self.shape, self.knobs = dict(shape), dict(knobs)

    def needs_retrain(self, live_count: int) -> bool:
        """True once trained and grown past retrain_growth x the trained size, or churned: more
        vectors added since training than that (the quantizers describe data since replaced)."""
        limit = self.retrain_growth * self.trained_n
        return limit > 0 and (live_count > limit or self.added > limit)

    def run_gate(
        self,
        search: SearchFn,
        vectors: np.ndarray,
        ids: np.ndarray,
        metric: str,
        caps: dict[str, int],
    ) -> GateResult:
        """Raise the knobs until recall reaches the floor (gate.tune) and record the result."""
        result = tune(search, vectors, ids, metric, self.knobs, caps, self.recall_floor)
        self.knobs, self.gate = dict(result.knobs), result.as_dict()
        if not result.passed:
            log.warning(
                "%s index reached recall@10 %.3f < floor %.2f at %s; raise its params",
                self.label,
                result.recall,
                result.floor,
                result.knobs,
            )
        return result

    def copy(self) -> TrainingState:
        return TrainingState(
            self.label,
            self.retrain_growth,
            self.recall_floor,
            self.trained_n,
            self.added,
            dict(self.shape),
            dict(self.knobs),
            dict(self.gate),
        )

    def meta(self) -> dict[str, Any]:
        """The state's entries in index.json."""
        return {
            "trained_n": self.trained_n,
            "added": self.added,
            "shape": dict(self.shape),
            "knobs": dict(self.knobs),
            "gate": dict(self.gate),
        }

    def load(self, meta: dict[str, Any]) -> None:
        """Restore what `meta()` wrote."""
        self.trained_n, self.added = int(meta["trained_n"]), int(meta.get("added", 0))
        self.shape = {k: int(v) for k, v in meta["shape"].items()}
        self.knobs = {k: int(v) for k, v in meta["knobs"].items()}
        self.gate = dict(meta["gate"])
