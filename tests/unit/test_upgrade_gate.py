"""Upgrade gate thresholds are type-checked (InvalidInput naming the field, never a TypeError
later inside the maintenance loop)."""

from __future__ import annotations

from typing import Any

import pytest

from embedstack.errors import InvalidInput
from embedstack.registry.upgrade import Gate

BAD = [
    ({"min_overlap": "x"}, "min_overlap"),
    ({"min_overlap": 1.5}, "min_overlap"),
    ({"min_overlap": None}, "min_overlap"),
    ({"k": "10"}, "k"),
    ({"k": 10.5}, "k"),
    ({"k": True}, "k"),
    ({"k": 0}, "k"),
    ({"sample_queries": [1]}, "sample_queries"),
    ({"min_recall": "high"}, "min_recall"),
    ({"max_recall_drop": float("nan")}, "max_recall_drop"),
    ({"max_recall_drop": {"a": 1}}, "max_recall_drop"),
    ({"nope": 1}, "nope"),
]


@pytest.mark.parametrize(("raw", "field"), BAD)
def test_a_bad_gate_is_invalid_input_naming_the_field(raw: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        Gate.parse(raw)


def test_good_gates_parse() -> None:
    assert Gate.parse(None) == Gate()
    gate = Gate.parse({"k": 5, "min_overlap": 1, "min_recall": None, "max_recall_drop": 0.05})
    assert gate.k == 5 and gate.min_overlap == 1.0 and isinstance(gate.min_overlap, float)
    with pytest.raises(InvalidInput, match="object"):
        Gate.parse(["k"])  # type: ignore[arg-type]
