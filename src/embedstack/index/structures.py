"""The faiss structure behind each index type, built with index_factory and addressed by position.

Every structure stores dense positions 0..n-1 as its labels (plain `add`); the IdMap beside it
turns them into our ids. That keeps one code path for all types: a bitmap selector over positions
excludes tombstones and applies allow filters, and IndexRefineFlat (which needs positional labels)
works as is. Cosine and ip use inner product (cosine vectors arrive normalized); l2 uses squared
L2 inside faiss, and the index takes the square root of the returned scores.
"""

from __future__ import annotations

import math
from typing import Any

import faiss
import numpy as np

from embedstack.errors import InvalidInput

TRAIN_SAMPLE_MAX = 65536  # vectors used to train quantizers (faiss subsamples k-means further)
MIN_TRAIN = 1000
TRAIN_PER_CENTROID = 39  # faiss k-means wants this many training points per centroid
PQ_POINTS_PER_CENTROID = 64  # faiss default 256; 64 x 256 codes = 16k residuals per sub-quantizer
# ivf_pq's refine store by bits per dimension: index_factory keys
REFINE_STORES = {32: "RFlat", 16: "Refine(SQfp16)", 8: "Refine(SQ8)"}


def _is(obj: Any, cls: Any) -> bool:
    """isinstance without type narrowing: faiss's stubs miss most attributes we read."""
    return isinstance(obj, cls)


def faiss_metric(metric: str) -> int:
    return int(faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT)


def auto_nlist(n: int) -> int:
    """Inverted lists for `n` training vectors: about 4 sqrt(n), at most n / 39 (faiss k-means
    wants TRAIN_PER_CENTROID points per centroid)."""
    return max(1, min(int(4 * math.sqrt(n)), n // TRAIN_PER_CENTROID))


def auto_leaves(n: int) -> int:
    """ScaNN partitions for `n` vectors: about 2 sqrt(n), at most n / 100."""
    return max(1, min(int(2 * math.sqrt(n)), n // 100))


def auto_m(dim: int) -> int:
    """Largest divisor of dim that is at most dim / 8 (8+ dimensions per sub-quantizer): on
    all-MiniLM-L6 vectors m=48 with refine reaches m=96's recall, and trains 5x faster."""
    return max(d for d in range(1, max(1, dim // 8) + 1) if dim % d == 0)


def check_shape(index_type: str, params: dict[str, Any], dim: int) -> None:
    m = int(params.get("m", 0))
    if index_type == "ivf_pq" and m and dim % m:
        raise InvalidInput(f"ivf_pq param m={m} must divide dim={dim}; use a divisor or 0 (auto)")
    bits = int(params.get("refine_bits", 32))
    if bits not in REFINE_STORES:
        raise InvalidInput(f"ivf_pq param refine_bits={bits}: use 32 (float32), 16 or 8 (SQ8)")


def train_min(index_type: str, params: dict[str, Any]) -> int:
    """How many live vectors an index of this type collects (searched exactly) before training."""
    if params.get("train_min"):
        return int(params["train_min"])
    need = MIN_TRAIN
    if params.get("nlist"):
        need = max(need, TRAIN_PER_CENTROID * int(params["nlist"]))
    if index_type == "ivf_pq":
        need = max(need, TRAIN_PER_CENTROID * (1 << int(params["nbits"])))
    return need


def resolve(index_type: str, params: dict[str, Any], dim: int, n: int) -> dict[str, int]:
    """The structural parameters, with every "0 = auto" filled in for `n` training vectors."""
    out: dict[str, int] = {}
    if "M" in params:
        out["M"] = int(params["M"])
    if "nlist" in params:
        out["nlist"] = int(params["nlist"]) or auto_nlist(n)
    if index_type == "ivf_pq":
        out["m"] = int(params["m"]) or auto_m(dim)
        out["nbits"] = int(params["nbits"])
        out["refine"] = int(params["refine_factor"] > 0)
        bits = int(params.get("refine_bits", 32))
        if out["refine"] and bits != 32:  # absent: float32 (shapes saved before it existed)
            out["refine_bits"] = bits
    return out


def factory_key(index_type: str, shape: dict[str, int]) -> str:
    if index_type == "hnsw":
        return f"HNSW{shape['M']},Flat"
    if index_type == "hnsw_sq8":
        return f"HNSW{shape['M']},SQ8"
    if index_type == "sq8":
        return "SQ8"
    if index_type == "ivf_flat":
        return f"IVF{shape['nlist']},Flat"
    if index_type == "ivf_pq":
        store = REFINE_STORES[shape.get("refine_bits", 32)]
        refine = f",{store}" if shape["refine"] else ""
        return f"IVF{shape['nlist']},PQ{shape['m']}x{shape['nbits']}np{refine}"
    return "Flat"


def build(
    index_type: str, shape: dict[str, int], params: dict[str, Any], dim: int, metric: str
) -> Any:
    """An empty structure (untrained for the trained types)."""
    structure: Any = faiss.index_factory(dim, factory_key(index_type, shape), faiss_metric(metric))
    if index_type in ("hnsw", "hnsw_sq8"):
        structure.hnsw.efConstruction = int(params["ef_construction"])
    if index_type == "ivf_pq":  # PQ k-means cost grows with its sample: 64 points per centroid
        ivfpq: Any = faiss.downcast_index(faiss.extract_index_ivf(structure))
        ivfpq.pq.cp.max_points_per_centroid = PQ_POINTS_PER_CENTROID
    return structure


def serialize(structure: Any) -> bytes:
    return bytes(faiss.serialize_index(structure))


def deserialize(data: bytes) -> Any:
    return faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8))


def search_params(
    index_type: str, trained: bool, knobs: dict[str, int], k: int, sel: Any
) -> tuple[Any, tuple[Any, ...]]:
    """faiss SearchParameters for one call (None when nothing needs setting), plus the objects it
    points at, which the caller keeps referenced while the parameters are in use."""
    if trained and index_type in ("hnsw", "hnsw_sq8"):
        extra = {} if sel is None else {"sel": sel}
        hnsw = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # missing in stubs
            efSearch=max(knobs["ef_search"], k), **extra
        )
        return hnsw, (sel,)
    if trained and index_type in ("ivf_flat", "ivf_pq"):
        ivf: Any = faiss.SearchParametersIVF()
        ivf.nprobe = knobs["nprobe"]
        if sel is not None:
            ivf.sel = sel
        if "refine_factor" not in knobs:
            return ivf, (sel,)
        refine: Any = faiss.IndexRefineSearchParameters()
        refine.k_factor = float(knobs["refine_factor"])
        refine.base_index_params = ivf
        return refine, (ivf, sel)
    if sel is None:
        return None, ()
    plain: Any = faiss.SearchParameters()
    plain.sel = sel
    return plain, (sel,)


def vectors_at(structure: Any, positions: np.ndarray) -> np.ndarray | None:
    """Stored vectors at `positions` (decoded for SQ), or None for a bare IVF (no direct map)."""
    s: Any = faiss.downcast_index(structure)
    if _is(s, faiss.IndexRefine):
        return np.asarray(s.refine_index.reconstruct_batch(positions))
    if _is(s, faiss.IndexIVF):
        return None
    return np.asarray(s.reconstruct_batch(positions))


def float_store(structure: Any) -> Any | None:
    """The IndexFlat holding a structure's vectors as given (flat, the untrained buffer, an
    HNSW graph's storage), or None when it keeps only codes (SQ, PQ, IVF lists)."""
    s: Any = faiss.downcast_index(structure)
    if _is(s, faiss.IndexHNSW):
        s = faiss.downcast_index(s.storage)
    return s if _is(s, faiss.IndexFlat) else None


def all_vectors(structure: Any) -> np.ndarray:
    """(ntotal, d) vectors by position: exact for flat and refine stores, decoded otherwise."""
    n = int(structure.ntotal)
    got = vectors_at(structure, np.arange(n, dtype=np.int64))
    if got is not None:
        return got
    ivf: Any = faiss.extract_index_ivf(structure)
    out = np.zeros((n, ivf.d), dtype=np.float32)
    for list_no, labels, codes in _lists(ivf):
        out[labels] = _decode(ivf, list_no, codes)
    return out


def _lists(ivf: Any) -> Any:
    invlists = ivf.invlists
    code_size = invlists.code_size
    for list_no in range(ivf.nlist):
        size = invlists.list_size(list_no)
        if size == 0:
            continue
        ids_ptr, codes_ptr = invlists.get_ids(list_no), invlists.get_codes(list_no)
        labels = faiss.rev_swig_ptr(ids_ptr, size).copy()
        codes = faiss.rev_swig_ptr(codes_ptr, size * code_size).copy().reshape(size, code_size)
        invlists.release_ids(list_no, ids_ptr)
        invlists.release_codes(list_no, codes_ptr)
        yield list_no, labels, codes


def _decode(ivf: Any, list_no: int, codes: np.ndarray) -> np.ndarray:
    concrete: Any = faiss.downcast_index(ivf)
    if _is(concrete, faiss.IndexIVFPQ):
        vecs = concrete.pq.decode(codes)
        if concrete.by_residual:
            vecs += concrete.quantizer.reconstruct(list_no)
        return np.asarray(vecs, dtype=np.float32)
    return codes.view(np.float32).reshape(len(codes), -1)


def is_ivf(structure: Any) -> bool:
    return _is(faiss.downcast_index(structure), faiss.IndexIVF | faiss.IndexRefine)


def compact_ivf(structure: Any, template: bytes, live: np.ndarray) -> Any:
    """A new IVF structure holding only positions `live` (sorted), renumbered 0..len(live)-1.
    Codes are copied list by list, not re-encoded, so PQ codes do not drift; a refine store is
    copied row by row. Fast (a memory copy): callers may hold their read lock through it."""
    fresh = deserialize(template)
    target: Any = faiss.downcast_index(fresh)
    source: Any = faiss.downcast_index(structure)
    remap = np.full(int(structure.ntotal), -1, dtype=np.int64)
    remap[live] = np.arange(len(live), dtype=np.int64)
    dst_ivf: Any = faiss.extract_index_ivf(target)
    for list_no, labels, codes in _lists(faiss.extract_index_ivf(source)):
        new = remap[labels]
        keep = new >= 0
        if keep.any():
            ids = np.ascontiguousarray(new[keep])
            kept = np.ascontiguousarray(codes[keep])
            dst_ivf.invlists.add_entries(
                list_no, len(ids), faiss.swig_ptr(ids), faiss.swig_ptr(kept)
            )
    dst_ivf.ntotal = len(live)
    if _is(source, faiss.IndexRefine):
        target.refine_index.add(source.refine_index.reconstruct_batch(live))
        target.ntotal = len(live)
    return fresh


def rebuilt(template: bytes, vectors: np.ndarray) -> Any:
    """A structure from `template` (empty, trained) with `vectors` added at positions 0..n-1.
    Re-adding decoded SQ8 vectors reproduces their codes bit for bit."""
    fresh = deserialize(template)
    for start in range(0, len(vectors), TRAIN_SAMPLE_MAX):
        fresh.add(np.ascontiguousarray(vectors[start : start + TRAIN_SAMPLE_MAX]))
    return fresh


def memory_bytes(structure: Any) -> int:
    """Bytes held by the structure's arrays (codes, ids, graph links, centroids, tables)."""
    s: Any = faiss.downcast_index(structure)
    if _is(s, faiss.IndexRefine):
        return memory_bytes(s.base_index) + memory_bytes(s.refine_index)
    if _is(s, faiss.IndexHNSW):
        h = s.hnsw
        links = h.neighbors.size() * 4 + h.offsets.size() * 8 + h.levels.size() * 4
        return int(links + memory_bytes(s.storage))
    if _is(s, faiss.IndexIVF):
        entries = sum(s.invlists.list_size(i) for i in range(s.nlist))
        total = entries * (s.invlists.code_size + 8) + s.nlist * 32 + memory_bytes(s.quantizer)
        if _is(s, faiss.IndexIVFPQ):
            total += s.pq.centroids.size() * 4 + s.precomputed_table.size() * 4
        return int(total)
    if _is(s, faiss.IndexFlatCodes):
        return int(s.codes.size())
    return int(s.ntotal * s.d * 4)
