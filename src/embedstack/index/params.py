"""Index type names, their parameters, defaults and ranges, in one table.

A "knob" is a search-time parameter: it may be overridden per call (`search(..., nprobe=64)`), and
the recall gate of a trained index may raise it when the configured value misses the floor.
"0 = auto" parameters are resolved when the index trains, from the number of vectors it trains on.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from embedstack.errors import InvalidInput
from embedstack.index.common import check_float, check_int


@dataclass(frozen=True)
class Param:
    default: float
    low: float
    high: float
    doc: str
    knob: bool = False
    real: bool = False  # a float, not an integer

    def check(self, key: str, value: Any) -> float:
        if self.real:
            return check_float(key, value, self.low, self.high)
        return check_int(key, value, int(self.low), int(self.high))


_HNSW = {
    "M": Param(32, 4, 256, "graph degree (links per node on upper layers; 2M on layer 0)"),
    # 100, not 200: the insert cost halves (HNSW inserts led the write path's profile) while
    # recall@10 at the default ef_search stays over the 0.95 floor of the 1M target: M=32,
    # ef_search=64, 29.5k real MiniLM vectors (GCIDE + noisy copies), 300 held-out real queries:
    # efC 200 -> 0.984 (996 inserts/s), 100 -> 0.971 (2,237/s), 64 -> 0.949 (3,397/s)
    "ef_construction": Param(100, 8, 8192, "candidate list size while inserting"),
    "ef_search": Param(64, 1, 32768, "candidate list size while searching", knob=True),
}
_TRAINED = {
    "train_min": Param(
        0,
        0,
        1 << 30,
        "serve exactly until this many vectors, then train (0 = auto: 1000; at least "
        "39 x nlist when nlist is fixed; ivf_pq at least 39 x 2^nbits)",
    ),
    "retrain_growth": Param(
        4.0,
        0.0,
        1000.0,
        "needs_retrain() once the live count, or the vectors added since training, pass this "
        "x the trained size (0 = never)",
        real=True,
    ),
    "recall_floor": Param(
        0.9,
        0.0,
        1.0,
        "at training, raise the search knobs until a self-test recall@10 reaches this (0 = off)",
        real=True,
    ),
}
_NLIST = Param(0, 0, 1 << 16, "inverted lists (0 = auto: about 4 sqrt(n), at most n / 39)")
_NPROBE = Param(32, 1, 1 << 16, "lists scanned per query", knob=True)

INDEX_PARAMS: MappingProxyType[str, MappingProxyType[str, Param]] = MappingProxyType(
    {
        name: MappingProxyType(spec)
        for name, spec in {
            "exact": {},
            "flat": {},
            "hnsw": _HNSW,
            "hnsw_sq8": {**_HNSW, **_TRAINED},
            "sq8": dict(_TRAINED),
            "ivf_flat": {"nlist": _NLIST, "nprobe": _NPROBE, **_TRAINED},
            "ivf_pq": {
                "nlist": _NLIST,
                "nprobe": _NPROBE,
                "m": Param(0, 0, 4096, "PQ sub-quantizers, must divide dim (0 = auto: dim / 8)"),
                "nbits": Param(8, 4, 12, "bits per sub-quantizer code"),
                "refine_factor": Param(
                    8,
                    0,
                    1024,
                    "re-score k x this PQ candidates exactly from stored float "
                    "vectors (0 = no float store, PQ scores only)",
                    knob=True,
                ),
                # the refine store's precision: 32 float32 (4 bytes a dimension), 16 float16, 8
                # SQ8 (1 byte: 10M x 384 in 3.6 GiB rather than 14.3 GiB); the candidates are
                # re-scored from it, so 8 costs a little recall that refine_factor buys back
                "refine_bits": Param(
                    32, 8, 32, "bits a dimension in the refine store: 32 (float32), 16, 8 (SQ8)"
                ),
                **_TRAINED,
            },
            "binary": {
                "M": Param(0, 0, 256, "HNSW degree over the bit codes (0 = flat Hamming scan)"),
                "ef_construction": Param(200, 8, 8192, "HNSW candidate list while inserting"),
                "ef_search": Param(64, 1, 32768, "HNSW candidate list (M > 0)", knob=True),
                "rescore": Param(
                    10,
                    1,
                    1024,
                    "re-score k x this Hamming candidates exactly from the kept float16 copy",
                    knob=True,
                ),
                **_TRAINED,
            },
            "scann": {
                "leaves": Param(0, 0, 1 << 16, "partitions (0 = auto: about sqrt(n))"),
                "leaves_to_search": Param(
                    0,
                    0,
                    1 << 16,
                    "partitions scanned per query (0 = auto: 10% of leaves)",
                    knob=True,
                ),
                "reorder": Param(100, 0, 1 << 16, "AH candidates re-scored exactly", knob=True),
                **_TRAINED,
            },
        }.items()
    }
)
INDEX_TYPES: tuple[str, ...] = tuple(INDEX_PARAMS)
TRAINED_TYPES: frozenset[str] = frozenset(
    {"hnsw_sq8", "sq8", "ivf_flat", "ivf_pq", "scann", "binary"}
)


def check_type(index_type: str) -> None:
    if index_type not in INDEX_PARAMS:
        raise InvalidInput(
            f"unknown index type {index_type!r}; choose one of {', '.join(INDEX_TYPES)}"
        )


def validate_params(index_type: str, params: dict[str, Any] | None) -> dict[str, Any]:
    """`params` with defaults filled; InvalidInput naming the fix for unknown or bad values."""
    check_type(index_type)
    if params is not None and not isinstance(params, dict):
        raise InvalidInput(f"index params must be an object, got {type(params).__name__}")
    spec = INDEX_PARAMS[index_type]
    unknown = sorted(set(params or {}) - set(spec))
    if unknown:
        valid = ", ".join(spec) or "none"
        raise InvalidInput(
            f"unknown index param(s) {', '.join(unknown)} for {index_type!r}; valid: {valid}"
        )
    merged = {key: p.default for key, p in spec.items()} | dict(params or {})
    out: dict[str, Any] = {key: spec[key].check(key, merged[key]) for key in spec}
    return out


def check_knobs(index_type: str, knobs: dict[str, Any]) -> dict[str, int]:
    """Per-call search overrides: each must be a knob of this type, in range."""
    spec = INDEX_PARAMS[index_type]
    out: dict[str, int] = {}
    for key, value in knobs.items():
        if value is None:
            continue
        param = spec.get(key)
        if param is None or not param.knob:
            valid = ", ".join(k for k, p in spec.items() if p.knob) or "none"
            raise InvalidInput(
                f"{key} is not a search parameter of {index_type!r} indexes; valid: {valid}"
            )
        out[key] = check_int(key, value, max(1, int(param.low)), int(param.high))
    return out


def query_knobs(
    index_type: str, params: dict[str, Any] | None, ef_search: int | None = None
) -> dict[str, int] | None:
    """A query's search parameters (its `params` object, plus the `ef_search` shorthand) checked
    for `index_type`: None when it asks for none; InvalidInput naming the fix otherwise."""
    if params is None and ef_search is None:
        return None
    asked = dict(params or {})
    if ef_search is not None:
        if asked.get("ef_search", ef_search) != ef_search:
            raise InvalidInput(
                f"'ef_search' is {ef_search} but params.ef_search is {asked['ef_search']}: "
                "send one of them (params.ef_search)"
            )
        asked["ef_search"] = ef_search
    if not asked:
        return None
    if not any(p.knob for p in INDEX_PARAMS[index_type].values()):
        raise InvalidInput(
            f"{index_type!r} indexes have no search parameters (every query scans all vectors "
            f"exactly): drop {', '.join(sorted(asked))}"
        )
    return check_knobs(index_type, asked)
