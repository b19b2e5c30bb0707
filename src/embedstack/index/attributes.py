"""Metadata values of an index's vectors by position: metadata filters evaluated in memory.

A filtered search needs the set of vectors a filter admits. Asking SQLite for it means a
json_extract of every document per query (seconds at 1M) and a list of ids to map onto the
index. Here each filtered key is a column aligned with the positions of one vector index:
int32 codes into a dictionary of the key's distinct values (-1: missing or null), the kind of
each value (null, number, text) and, for range operators, its numeric value as float64. A
filter becomes a bool mask over positions in a few vectorized passes, which the index turns
into a bitmap selector (index/faiss_index.py `search_mask`).

The values are SQLite's own json_extract results (the owner reads them from the store), and a
mask selects exactly what storage/filters.py's SQL selects: numbers compare across integers
and reals (JSON true/false are 1/0), every number sorts before every text, texts compare by
code point (the order of their UTF-8 bytes), objects and arrays are their JSON text, and a
missing key or null matches no comparison (not even $ne or $nin); a null operand tests IS NULL
(IS NOT NULL for $ne), whatever the operator; `$nin` with a null in its list matches nothing
(SQL's NOT IN). tests/unit/test_attributes.py checks that against SQLite on mixed data.

Not thread-safe on its own: the owner (registry/indexes.py) serializes changes and reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NULL, NUMBER, TEXT = 0, 1, 2
EXACT_INT = 1 << 53  # integers up to this size are exact as float64
_RANGE = ("$gt", "$gte", "$lt", "$lte")


def _kind(value: Any) -> int:
    if value is None:
        return NULL
    return TEXT if isinstance(value, str) else NUMBER


def _compare(value: Any, op: str, operand: Any) -> bool:
    """SQLite's `value OP operand` for non-null values: numbers before texts."""
    a = (0, value) if _kind(value) == NUMBER else (1, value)
    b = (0, operand) if _kind(operand) == NUMBER else (1, operand)
    if op == "$gt":
        return a > b
    if op == "$gte":
        return a >= b
    if op == "$lt":
        return a < b
    return a <= b


class Column:
    """One key's values by position."""

    def __init__(self) -> None:
        self.codes = np.empty(0, np.int32)  # dictionary code per position, -1 for null
        self.kinds = np.empty(0, np.int8)  # NULL, NUMBER or TEXT per position
        self.numbers = np.empty(0, np.float64)  # the value of NUMBER positions, else NaN
        self.values: list[Any] = []  # code -> value (1 and 1.0 share a code, as in SQL)
        self.lookup: dict[Any, int] = {}  # value -> code
        self.exact = True  # every number is exact as float64 (else ranges compare by value)

    def encode(self, values: Sequence[Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        codes = np.empty(len(values), np.int32)
        kinds = np.empty(len(values), np.int8)
        numbers = np.full(len(values), np.nan)
        lookup = self.lookup
        for i, value in enumerate(values):
            if value is None:
                codes[i], kinds[i] = -1, NULL
                continue
            code = lookup.get(value)
            if code is None:
                code = lookup[value] = len(self.values)
                self.values.append(value)
            codes[i] = code
            if isinstance(value, str):
                kinds[i] = TEXT
            else:
                kinds[i] = NUMBER
                numbers[i] = value
                if isinstance(value, int) and abs(value) > EXACT_INT:
                    self.exact = False
        return codes, kinds, numbers

    def set(self, positions: np.ndarray, values: Sequence[Any]) -> None:
        """Values at `positions` (all below the current length)."""
        codes, kinds, numbers = self.encode(values)
        self.codes[positions], self.kinds[positions], self.numbers[positions] = (
            codes,
            kinds,
            numbers,
        )

    def append(self, values: Sequence[Any]) -> None:
        codes, kinds, numbers = self.encode(values)
        self.codes = np.concatenate([self.codes, codes])
        self.kinds = np.concatenate([self.kinds, kinds])
        self.numbers = np.concatenate([self.numbers, numbers])

    def take(self, rows: np.ndarray) -> None:
        """Keep the positions `rows` (-1: a null), in that order: the column of a new index."""
        found = rows >= 0
        at = np.where(found, rows, 0)
        self.codes = np.where(found, self.codes[at] if len(self.codes) else -1, -1).astype(np.int32)
        kinds = self.kinds[at] if len(self.kinds) else np.zeros(len(rows), np.int8)
        self.kinds = np.where(found, kinds, NULL).astype(np.int8)
        numbers = self.numbers[at] if len(self.numbers) else np.full(len(rows), np.nan)
        self.numbers = np.where(found, numbers, np.nan)

    # -- evaluation -------------------------------------------------------------------------
    def mask(self, op: str, value: Any) -> np.ndarray:
        codes = self.codes
        if value is None and op not in ("$in", "$nin"):  # IS NULL, or IS NOT NULL for $ne
            return codes >= 0 if op == "$ne" else codes < 0
        if op == "$eq":
            code = self.lookup.get(value)
            return codes == code if code is not None else np.zeros(len(codes), bool)
        if op == "$ne":
            code = self.lookup.get(value)
            return (codes != code) & (codes >= 0) if code is not None else codes >= 0
        if op in ("$in", "$nin"):
            if op == "$nin" and any(v is None for v in value):
                return np.zeros(len(codes), bool)  # x NOT IN (..., NULL) is never true
            wanted = [
                c for c in (self.lookup.get(v) for v in value if v is not None) if c is not None
            ]
            hit = self._by_codes(wanted)
            return hit if op == "$in" else ~hit & (codes >= 0)
        if op in _RANGE:
            return self._range(op, value)
        raise ValueError(f"unknown operator {op!r}")

    def _by_codes(self, wanted: list[int]) -> np.ndarray:
        """Positions whose code is one of `wanted`."""
        if len(wanted) == 1:
            return self.codes == wanted[0]
        table = np.zeros(len(self.values) + 1, bool)  # the last slot: code -1 (null)
        table[wanted] = True
        return table[self.codes]

    def _range(self, op: str, value: Any) -> np.ndarray:
        numeric = _kind(value) == NUMBER
        if numeric and self.exact and (isinstance(value, float) or abs(value) <= EXACT_INT):
            x = float(value)
            with np.errstate(invalid="ignore"):
                if op == "$gt":
                    hit = self.numbers > x
                elif op == "$gte":
                    hit = self.numbers >= x
                elif op == "$lt":
                    hit = self.numbers < x
                else:
                    hit = self.numbers <= x
            if op in ("$gt", "$gte"):
                hit |= self.kinds == TEXT  # every text sorts after every number
            return hit
        # a text operand, or numbers too large for float64: decide per distinct value
        wanted = [c for c, v in enumerate(self.values) if _compare(v, op, value)]
        if not wanted:
            return np.zeros(len(self.codes), bool)
        return self._by_codes(wanted)

    def memory_bytes(self) -> int:
        return self.codes.nbytes + self.kinds.nbytes + self.numbers.nbytes + 64 * len(self.values)


class Attributes:
    """Columns of the filtered keys over positions 0..size-1 of one index, plus the id at each
    position. Positions only grow (an index appends; removes leave tombstones) until the index
    is replaced: `realign` then carries the columns over to the new positions."""

    def __init__(self) -> None:
        self.labels = np.empty(0, np.int64)  # the id at each position
        self.columns: dict[str, Column] = {}

    @property
    def size(self) -> int:
        return len(self.labels)

    def add_key(self, key: str, values: Sequence[Any]) -> None:
        """A new column with a value for each current position."""
        if len(values) != self.size:
            raise ValueError(f"{len(values)} values for {self.size} positions")
        column = Column()
        column.append(values)
        self.columns[key] = column

    def append(self, labels: np.ndarray, values: dict[str, Sequence[Any]]) -> None:
        """New positions: their ids and, per column, their values."""
        for key, column in self.columns.items():
            column.append(values[key])
        self.labels = np.concatenate([self.labels, np.asarray(labels, np.int64)])

    def set(self, positions: np.ndarray, values: dict[str, Sequence[Any]]) -> None:
        """Changed values (a document's metadata was replaced) at existing positions."""
        for key, column in self.columns.items():
            column.set(positions, values[key])

    def realign(self, labels: np.ndarray) -> np.ndarray:
        """The index was replaced: its positions now hold `labels`. Carries every column over;
        returns the new positions whose ids were not here before (their values are null until
        the caller `set`s them)."""
        labels = np.asarray(labels, np.int64)
        order = np.argsort(self.labels, kind="stable")
        ids = self.labels[order]
        at = np.minimum(np.searchsorted(ids, labels), max(len(ids) - 1, 0))
        found = (ids[at] == labels) if len(ids) else np.zeros(len(labels), bool)
        rows = np.where(found, order[at] if len(ids) else 0, -1)
        for column in self.columns.values():
            column.take(rows)
        self.labels = labels
        return np.flatnonzero(~found)

    def mask(self, conditions: Sequence[tuple[str, str, Any]]) -> np.ndarray:
        """Positions that satisfy every (key, operator, value) condition (each key a column)."""
        out: np.ndarray | None = None
        for key, op, value in conditions:
            hit = self.columns[key].mask(op, value)
            out = hit if out is None else out & hit
        return np.ones(self.size, bool) if out is None else out

    def memory_bytes(self) -> int:
        return self.labels.nbytes + sum(c.memory_bytes() for c in self.columns.values())
