"""Capacity planning: memory per index family, shards and nodes for a node size, build time.

The memory formulas count what each backend's `memory_bytes()` counts (faiss_index.py,
structures.py, idmap.py, scann_index.py, exact.py): stored vectors or codes, graph links,
inverted-list ids, centroids and codebooks (kept twice: in the structure and in its serialized
training template), and the id map. bench/plan_check.py checks them against real indexes.

Build times come from per-unit rates measured on this project's 2-core benchmark machine
(BUILD_RATES; see its docstring), so they are estimates for one 2-core node per shard.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

from embedstack.errors import InvalidInput
from embedstack.index.params import INDEX_PARAMS, validate_params
from embedstack.index.structures import (
    TRAIN_PER_CENTROID,
    TRAIN_SAMPLE_MAX,
    auto_leaves,
    auto_m,
    auto_nlist,
)

FLOAT = 4  # faiss stores float32 whatever the source dtype
IDMAP_BYTES = 25  # IdMap per position: id 8 + live flag 1 + sorted key 8 + its position 8
LIST_ID_BYTES = 8  # an IVF inverted-list entry's label
LIST_HEADER_BYTES = 32  # per inverted list
PRECOMPUTED_TABLE_MAX = 1 << 31  # faiss builds the IVF-PQ L2 table only under 2 GiB
PY_DICT_BYTES = 100  # a Python dict entry id -> row (exact, scann)
HEADROOM = 0.7  # share of node RAM an index may use (OS, server, queries, a rebuild's peak)
MAX_SHARD_ROUNDS = 8
SCANN_TRAIN_MAX = 100_000  # scann_index.py's training_sample_size cap


@dataclass(frozen=True)
class BuildRates:
    """Seconds per unit of build work on one 2-core node (AVX-512 Xeon, faiss 1.15 with 2
    OpenMP threads, scann 1.4.2). Calibrated from bench/plan_check.py builds at 100k and 1M x 384
    float32 on the shared benchmark machine (load average 7-9 from other jobs while measured);
    runs there varied by up to 2x, so read build times as +-2x, and a quiet node as faster."""

    store_per_float: float = 5e-9  # flat/refine adds (copy) per stored dimension
    sq_per_float: float = 7e-9  # SQ8 train + encode per dimension
    hnsw_unit: float = 9e-9  # per vector per d * (M * ef_construction)^0.7, at 1e5 vectors
    kmeans_unit: float = 5e-10  # k-means per (training vector x centroid x dim), all iterations
    assign_unit: float = 2e-11  # IVF add per (vector x list x dim)
    pq_train_unit: float = 1.2e-7  # PQ training per (training vector x 2^nbits x sub-quantizer)
    pq_encode_unit: float = 2e-11  # PQ encoding per (vector x 2^nbits x dim)
    scann_per_float: float = 2e-7  # ScaNN AH training, encoding and re-rank store per dimension


BUILD_RATES = BuildRates()


@dataclass(frozen=True)
class Plan:
    vectors: int
    dim: int
    index_type: str
    params: dict[str, Any]  # resolved for one shard: autos filled in
    raw_bytes: int  # vectors x dim x dtype_bytes
    index_bytes: int  # all shards, one replica
    components: tuple[tuple[str, int], ...]  # what index_bytes is made of
    node_ram_bytes: int
    usable_bytes: int  # node RAM x headroom
    shards: int
    replicas: int
    build_seconds: float  # wall clock: each shard built on its own 2-core node, in parallel
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def nodes(self) -> int:
        return self.shards * self.replicas

    @property
    def bytes_per_vector(self) -> float:
        return self.index_bytes / max(1, self.vectors)


# -- sizes ----------------------------------------------------------------------------------------
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d*)?(?:e[+-]?\d+)?)\s*([kmgtp]?)(i?)(b?)\s*$", re.I)


def parse_size(text: str) -> int:
    """ "64GiB" -> 68719476736; "64GB" / "64G" -> 64e9; "1.5TiB", "512MiB", "1e9" also work."""
    found = _SIZE_RE.match(str(text))
    if not found or (found.group(3) and not found.group(2)):
        raise InvalidInput(f"cannot read size {text!r}: write e.g. 64GiB, 512MiB, 2TB or 1e9")
    number, prefix, binary = float(found.group(1)), found.group(2).lower(), found.group(3)
    scale = 1024 ** "kmgtp".index(prefix) * 1024 if binary else _UNITS[prefix]
    return int(number * scale)


def human_bytes(n: float) -> str:
    """Binary units, about 3 significant digits: 3.072e12 -> '2.79 TiB'."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            digits = 0 if unit == "B" or abs(n) >= 100 else 1 if abs(n) >= 10 else 2
            return f"{n:.{digits}f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


# -- memory per family ----------------------------------------------------------------------------
def resolve_params(
    index_type: str, params: dict[str, Any] | None, n: int, dim: int
) -> dict[str, Any]:
    """`params` validated, defaults filled, and every "0 = auto" resolved for `n` vectors."""
    full = validate_params(index_type, params)
    if full.get("nlist") == 0:
        full["nlist"] = auto_nlist(n)
    if index_type == "ivf_pq" and full["m"] == 0:
        full["m"] = auto_m(dim)
    if index_type == "ivf_pq" and dim % int(full["m"]):
        raise InvalidInput(f"ivf_pq param m={full['m']} must divide dim={dim}")
    if index_type == "scann" and full["leaves"] == 0:
        full["leaves"] = auto_leaves(n)
    return full


def _hnsw_links(m: int) -> float:
    """Bytes of graph per vector: 2M int32 links on layer 0, M per upper layer (expected
    1/(M-1) of them), plus the node's offset (8) and level (4)."""
    return FLOAT * (2 * m + m / (m - 1)) + 12


def memory_components(
    index_type: str, p: dict[str, Any], n: int, d: int, metric: str = "cosine"
) -> list[tuple[str, int]]:
    """(what, bytes) of one index of `n` vectors with resolved params `p`."""
    ids = ("id map", n * IDMAP_BYTES)
    sq_trained = ("SQ8 ranges", 2 * d * FLOAT * 2)
    if index_type == "exact":
        return [("float32 vectors + ids", n * (d * FLOAT + 8)), ("id dict", n * PY_DICT_BYTES)]
    if index_type == "flat":
        return [("float32 vectors", n * d * FLOAT), ids]
    if index_type in ("hnsw", "hnsw_sq8"):
        links = ("graph links", round(n * _hnsw_links(int(p["M"]))))
        if index_type == "hnsw":
            return [("float32 vectors", n * d * FLOAT), links, ids]
        return [("SQ8 codes", n * d), links, ids, sq_trained]
    if index_type == "sq8":
        return [("SQ8 codes", n * d), ids, sq_trained]
    if index_type in ("ivf_flat", "ivf_pq"):
        nlist = int(p["nlist"])
        lists = ("coarse centroids", 2 * nlist * d * FLOAT + nlist * LIST_HEADER_BYTES)
        if index_type == "ivf_flat":
            return [("float32 vectors + list ids", n * (d * FLOAT + LIST_ID_BYTES)), lists, ids]
        m, nbits = int(p["m"]), int(p["nbits"])
        code = math.ceil(m * nbits / 8)
        out = [
            ("PQ codes + list ids", n * (code + LIST_ID_BYTES)),
            lists,
            ids,
            ("PQ codebooks", 2 * (1 << nbits) * d * FLOAT),
        ]
        table = nlist * m * (1 << nbits) * FLOAT
        if metric == "l2" and table <= PRECOMPUTED_TABLE_MAX:
            out.append(("precomputed L2 table", table))
        if int(p["refine_factor"]) > 0:
            bits = int(p.get("refine_bits", 32))
            name = {32: "float32", 16: "float16", 8: "SQ8"}[bits]
            out.append((f"{name} refine store", n * d * bits // 8))
            if bits == 8:  # SQ8's per-dimension ranges, in the structure and its template
                out.append(("SQ8 ranges", 2 * 2 * d * FLOAT))
        return out
    if index_type == "binary":  # binary.py: bits + a float16 re-score copy
        out = [("sign-bit codes", n * math.ceil(d / 8)), ("float16 re-score copy", n * d * 2), ids]
        if int(p["M"]):
            out.append(("graph links", round(n * _hnsw_links(int(p["M"])))))
        return [*out, ("thresholds", d * FLOAT)]
    if index_type == "scann":
        rerank = 2 * d if metric == "l2" else d + 4  # bfloat16, or int8 + norm
        return [
            ("int8 re-rank store", n * rerank),
            ("AH codes + partition", n * (d // 4 + 4)),
            ("partition centers", int(p["leaves"]) * d * FLOAT + d * FLOAT * 32),
            ("ids", n * (8 + PY_DICT_BYTES)),
        ]
    raise InvalidInput(f"no memory model for index type {index_type!r}")


# -- build time -----------------------------------------------------------------------------------
def build_seconds(
    index_type: str, p: dict[str, Any], n: int, d: int, rates: BuildRates = BUILD_RATES
) -> float:
    """Estimated seconds to build one index of `n` vectors on one 2-core node."""
    if index_type in ("exact", "flat"):
        return n * d * rates.store_per_float
    if index_type in ("hnsw", "hnsw_sq8"):
        work = d * (int(p["M"]) * int(p["ef_construction"])) ** 0.7
        depth = math.log(max(n, 2)) / math.log(1e5)
        return n * work * depth * rates.hnsw_unit
    if index_type == "sq8":
        return n * d * rates.sq_per_float
    if index_type == "binary":  # encode + copy like sq8; a Hamming graph (not calibrated)
        seconds = n * d * rates.sq_per_float
        if int(p["M"]):
            work = (d / 32) * (int(p["M"]) * int(p["ef_construction"])) ** 0.7
            seconds += n * work * math.log(max(n, 2)) / math.log(1e5) * rates.hnsw_unit
        return seconds
    if index_type == "scann":  # partitions trained on up to SCANN_TRAIN_MAX vectors
        train = min(n, SCANN_TRAIN_MAX) * int(p["leaves"]) * d * rates.kmeans_unit
        return train + n * d * rates.scann_per_float
    nlist = int(p["nlist"])
    train_n = min(n, TRAIN_SAMPLE_MAX)
    seconds = train_n * nlist * d * rates.kmeans_unit + n * nlist * d * rates.assign_unit
    if index_type == "ivf_flat":
        return seconds + n * d * rates.store_per_float
    ksub, m = 1 << int(p["nbits"]), int(p["m"])
    seconds += train_n * ksub * m * rates.pq_train_unit + n * ksub * d * rates.pq_encode_unit
    if int(p["refine_factor"]) > 0:
        seconds += n * d * rates.store_per_float
    return seconds


# -- the plan -------------------------------------------------------------------------------------
def plan(
    vectors: int,
    dim: int,
    index_type: str,
    params: dict[str, Any] | None = None,
    replicas: int = 1,
    node_ram_bytes: int = 64 * 2**30,
    dtype_bytes: int = 4,
    *,
    metric: str = "cosine",
    headroom: float = HEADROOM,
    rates: BuildRates = BUILD_RATES,
) -> Plan:
    """Memory, shards (ceil(index bytes / usable node RAM)), nodes (shards x replicas) and build
    time for `vectors` x `dim` in `index_type`. Each shard is sized as its own index (auto
    params such as nlist resolved for the shard), so per-shard fixed costs are counted."""
    if vectors < 1 or dim < 1 or replicas < 1 or dtype_bytes < 1:
        raise InvalidInput("vectors, dim, replicas and dtype_bytes must be positive")
    if index_type not in INDEX_PARAMS:
        raise InvalidInput(f"unknown index type {index_type!r}; one of {', '.join(INDEX_PARAMS)}")
    usable = int(node_ram_bytes * headroom)
    shards = 1
    for _ in range(MAX_SHARD_ROUNDS):
        per_shard = math.ceil(vectors / shards)
        resolved = resolve_params(index_type, params, per_shard, dim)
        largest = sum(b for _, b in memory_components(index_type, resolved, per_shard, dim, metric))
        fixed = memory_components(index_type, resolved, 0, dim, metric)  # per-shard costs
        parts = [
            (what, b + (shards - 1) * f)
            for (what, b), (_, f) in zip(
                memory_components(index_type, resolved, vectors, dim, metric), fixed, strict=True
            )
        ]
        total = sum(b for _, b in parts)
        need = max(math.ceil(total / usable), shards + (largest > usable))
        if need <= shards:
            break
        shards = need
    else:
        raise InvalidInput(
            f"{index_type} cannot fit a shard in {human_bytes(usable)} of usable node RAM; "
            "use bigger nodes or a more compact index"
        )
    notes = []
    if int(resolved.get("refine_factor", 0)) > 0:
        bits = int(resolved.get("refine_bits", 32))
        copy = {32: "a float32", 16: "a float16", 8: "an SQ8 (1 byte a dimension)"}[bits]
        notes.append(
            f"refine_factor > 0 keeps {copy} copy of every vector for re-ranking; "
            "refine_factor=0 drops it at a recall cost"
            + ("; refine_bits=8 keeps a quarter of it" if bits == 32 else "")
        )
    if resolved.get("nlist") and TRAIN_PER_CENTROID * int(resolved["nlist"]) > TRAIN_SAMPLE_MAX:
        notes.append(
            f"nlist {resolved['nlist']} has under 39 training vectors per list in the "
            f"{TRAIN_SAMPLE_MAX}-vector training sample"
        )
    return Plan(
        vectors=vectors,
        dim=dim,
        index_type=index_type,
        params=resolved,
        raw_bytes=vectors * dim * dtype_bytes,
        index_bytes=total,
        components=tuple(parts),
        node_ram_bytes=node_ram_bytes,
        usable_bytes=usable,
        shards=shards,
        replicas=replicas,
        build_seconds=build_seconds(index_type, resolved, per_shard, dim, rates),
        notes=tuple(notes),
    )


def plan_all(
    vectors: int,
    dim: int,
    replicas: int = 1,
    node_ram_bytes: int = 64 * 2**30,
    dtype_bytes: int = 4,
    *,
    metric: str = "cosine",
    headroom: float = HEADROOM,
) -> list[Plan]:
    """One plan per index family with its default parameters, plus ivf_pq without its float
    re-ranking store (the variant that actually saves memory)."""
    kwargs: dict[str, Any] = {"metric": metric, "headroom": headroom}
    variants: list[tuple[str, dict[str, Any] | None]] = [(t, None) for t in INDEX_PARAMS]
    if "ivf_pq" in INDEX_PARAMS:
        variants.insert(variants.index(("ivf_pq", None)) + 1, ("ivf_pq", {"refine_factor": 0}))
    return [
        plan(vectors, dim, t, params, replicas, node_ram_bytes, dtype_bytes, **kwargs)
        for t, params in variants
    ]


# -- resident memory of a serving node -------------------------------------------------------------
@dataclass(frozen=True)
class ProcessCosts:
    """What a single-node server holds besides its index, measured on this project's benchmark
    machine (bench/ten_million.py prints it): the Python process with its libraries (FastAPI,
    numpy, faiss, onnxruntime, metrics) and an empty collection, 246-250 MiB idle; the store's
    SQLite page cache per connection (its default cache_size, 2,000 KiB); and the pages of the
    store file that serving reads through the memory map (storage/store.py maps at most 256
    MiB of it per connection; mapped pages count as resident). Counted once: the query threads
    read the same hot pages (hits' rows), and a bulk load's writer pages are given back at a
    restart. A bulk load's own working set (request bodies, the insert batches, the index's
    training copy) comes on top while it runs: bench/ten_million.py reports that peak apart."""

    process_bytes: int = 250 * 2**20
    page_cache_bytes: int = 2000 * 1024
    connections: int = 4  # writer, ingest worker, index applier, a query thread
    mmap_bytes: int = 256 * 2**20


PROCESS_COSTS = ProcessCosts()
# store file bytes per bring-your-own vector beyond its float32 bytes: the chunk row's other
# columns, the document row, their indexes, the change log, page slack (16 KiB pages): measured
# 2,152 bytes a 384-d vector at 300k (bench/ten_million.py)
STORE_ROW_BYTES = 616


def store_bytes(vectors: int, dim: int) -> int:
    """The store file (SQLite) holding `vectors` bring-your-own float32 vectors of `dim`: each
    kept once, in its chunk row (its document row keeps no copy)."""
    return vectors * (dim * FLOAT + STORE_ROW_BYTES)


def resident(
    p: Plan, store_bytes: int, costs: ProcessCosts = PROCESS_COSTS
) -> list[tuple[str, int]]:
    """(what, bytes) a server holds resident while it serves the plan's index (one shard on
    one node) over a store file of `store_bytes`: the index's components, the process, and
    the store's caches."""
    share = 1 / p.shards
    parts = [(f"index: {what}", round(b * share)) for what, b in p.components]
    parts += [
        ("server process (Python, libraries, empty collection)", costs.process_bytes),
        (f"store page cache ({costs.connections} connections x 2,000 KiB)",
         costs.connections * costs.page_cache_bytes),
        ("store memory map (min(store file, mmap_size))", min(store_bytes, costs.mmap_bytes)),
    ]  # fmt: skip
    return parts
