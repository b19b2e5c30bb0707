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


def _path(key: str) -> str:
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


def filter_sql(flt: dict[str, Any], column: str = "d.metadata") -> tuple[str, list[Any]]:
    """`{"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}` -> (where, params).

    Conditions are ANDed. Operators: $eq, $ne, $gt, $gte, $lt, $lte, $in, $nin.
    """
    if not isinstance(flt, dict):
        raise InvalidInput(f"'filter' must be an object, got {type(flt).__name__}")
    if len(flt) > MAX_KEYS:
        raise InvalidInput(f"filter tests {len(flt)} fields, over the limit of {MAX_KEYS}")
    clauses: list[str] = []
    params: list[Any] = []
    for key, cond in flt.items():
        expr = f"json_extract({column}, ?)"
        path = _path(key)
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
                marks = ",".join("?" * len(value))
                neg = "NOT " if op == "$nin" else ""
                clauses.append(f"{expr} {neg}IN ({marks})")
                params += [path, *(_scalar(key, v) for v in value)]
            elif op in _OPS:
                v = _scalar(key, value)
                if v is None:
                    clauses.append(f"{expr} IS {'NOT ' if op == '$ne' else ''}NULL")
                    params.append(path)
                else:
                    clauses.append(f"{expr} {_OPS[op]} ?")
                    params += [path, v]
            else:
                raise InvalidInput(
                    f"unknown filter operator {op!r} for {key!r}; "
                    f"use one of {', '.join([*_OPS, '$in', '$nin'])}"
                )
    return " AND ".join(clauses) or "1", params
