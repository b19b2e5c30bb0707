"""Metadata filters -> parameterized SQL over documents.metadata (JSON)."""

from __future__ import annotations

import math
from typing import Any

from embedstack.errors import InvalidInput

_OPS = {"$eq": "=", "$ne": "!=", "$gt": ">", "$gte": ">=", "$lt": "<", "$lte": "<="}
Scalar = str | int | float | bool | None
MAX_KEYS = 64  # fields one filter may test
MAX_VALUES = 1024  # values of one $in / $nin list
INT64 = 1 << 63


def json_path(key: str) -> str:
    if not isinstance(key, str) or not key or '"' in key or "\\" in key or key.startswith("$"):
        raise InvalidInput(
            f"filter key {key!r} is not allowed: use a metadata field name without quotes, "
            "backslashes or a leading '$'"
        )
    return f'$."{key}"'


def _scalar(key: str, value: Any) -> Any:
    if isinstance(value, bool):
        return int(value)  # JSON true/false are 1/0 in SQLite's json_extract
    if isinstance(value, int) and not -INT64 <= value < INT64:
        raise InvalidInput(
            f"filter value for {key!r} is an integer outside the 64-bit range: {value}"
        )
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput(f"filter value for {key!r} must be a finite number, got {value}")
    if value is None or isinstance(value, str | int | float):
        return value
    raise InvalidInput(
        f"filter value for {key!r} must be a string, number, boolean or null, "
        f"or an operator object like {{'$in': [...]}}; got {type(value).__name__}"
    )


Condition = tuple[str, str, Any]  # (key, operator, value: a scalar, or a list for $in/$nin)
OPERATORS = (*_OPS, "$in", "$nin")


def conditions(flt: dict[str, Any]) -> list[Condition]:
    """`{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}` -> checked
    (key, operator, value) triples, ANDed; values as SQLite compares them (booleans 1/0).

    Operators: $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin. InvalidInput names what is wrong."""
    if not isinstance(flt, dict):
        raise InvalidInput(f"'filter' must be an object, got {type(flt).__name__}")
    if len(flt) > MAX_KEYS:
        raise InvalidInput(f"filter tests {len(flt)} fields, over the limit of {MAX_KEYS}")
    out: list[Condition] = []
    for key, cond in flt.items():
        json_path(key)
        ops = cond if isinstance(cond, dict) else {"$eq": cond}
        if not ops:
            raise InvalidInput(f"filter for {key!r} is an empty object: give a value or operator")
        for op, value in ops.items():
            if op in ("$in", "$nin"):
                if not isinstance(value, list) or not value:
                    raise InvalidInput(f"{op} for {key!r} needs a non-empty list of values")
                if len(value) > MAX_VALUES:
                    raise InvalidInput(
                        f"{op} for {key!r} has {len(value)} values, over the limit of "
                        f"{MAX_VALUES} values"
                    )
                out.append((key, op, [_scalar(key, v) for v in value]))
            elif op in _OPS:
                out.append((key, op, _scalar(key, value)))
            else:
                raise InvalidInput(
                    f"unknown filter operator {op!r} for {key!r}; use one of {', '.join(OPERATORS)}"
                )
    return out


def filter_sql(flt: dict[str, Any], column: str = "d.metadata") -> tuple[str, list[Any]]:
    """`conditions(flt)` as a parameterized SQL condition over the metadata JSON `column`."""
    clauses: list[str] = []
    params: list[Any] = []
    for key, op, value in conditions(flt):
        expr = f"json_extract({column}, ?)"
        params.append(json_path(key))
        if op in ("$in", "$nin"):
            marks = ",".join("?" * len(value))
            clauses.append(f"{expr} {'NOT ' if op == '$nin' else ''}IN ({marks})")
            params += value
        elif value is None:
            clauses.append(f"{expr} IS {'NOT ' if op == '$ne' else ''}NULL")
        else:
            clauses.append(f"{expr} {_OPS[op]} ?")
            params.append(value)
    return " AND ".join(clauses) or "1", params
