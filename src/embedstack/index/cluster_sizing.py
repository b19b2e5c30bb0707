"""Sizing a cluster: virtual shards x replicas x nodes for a vector count, dim, index type, a
query rate and a recall target, with the arithmetic spelled out (`embedstack plan --qps`).

Memory comes from planner.plan (what each index really holds). Query CPU comes from measured
per-core search rates on this project's 2-core benchmark machine:
- HNSW: all-MiniLM-L6-v2 vectors of 72k GCIDE entries (384-d), M=32: efSearch 64 gave recall@10
  0.98 at 7k QPS on 2 threads (3,500 per core); hnswlib efSearch 128 gave 0.995. A search visits
  about ef x M nodes per layer over log(n) layers, so the rate scales with 64/ef, 384/dim and
  log(72k)/log(n).
- flat / exact: a full scan; faiss IndexFlatIP read 4 GB/s of vectors per core (100k x 384,
  one query at a time, load average 24 on 2 cores; a quiet core is faster).
Both are estimates to check with `embedstack tune` and bench/cluster.py on the real hardware.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from embedstack.errors import InvalidInput
from embedstack.index.planner import Plan, human_bytes

HNSW_QPS_PER_CORE = 3500.0  # at ef 64, 384-d, 72k vectors (see above)
HNSW_REF_N = 72_000
HNSW_REF_DIM = 384
HNSW_REF_EF = 64
SCAN_BYTES_PER_CORE_S = 4e9
UTILIZATION = 0.6  # plan CPU for 60% busy: queueing stays short and a node loss is absorbed
MIN_REPLICAS = 2  # survive one node
# measured recall@10 points -> efSearch (GCIDE, L6 vectors; above 0.995 untested: 256 is a guess)
RECALL_EF = ((0.95, 32), (0.98, 64), (0.995, 128), (1.0, 256))
SIZED = ("hnsw", "flat", "exact")


@dataclass(frozen=True)
class ClusterPlan:
    virtual_shards: int
    replicas: int
    nodes: int
    ef_search: int | None
    shard_vectors: int
    qps_per_core: float  # one shard's searches per second per core
    cores: float
    lines: tuple[str, ...]


def ef_for(recall: float) -> int:
    for bound, ef in RECALL_EF:
        if recall <= bound:
            return ef
    return RECALL_EF[-1][1]


def shard_qps_per_core(index_type: str, n: int, dim: int, recall: float) -> float:
    if index_type == "hnsw":
        ef = ef_for(recall)
        depth = math.log(HNSW_REF_N) / math.log(max(n, 16))
        return HNSW_QPS_PER_CORE * (HNSW_REF_EF / ef) * (HNSW_REF_DIM / dim) * depth
    return SCAN_BYTES_PER_CORE_S / (max(n, 1) * dim * 4)


def size_cluster(
    memory: Plan, qps: float, recall: float, node_cores: int, virtual_shards: int | None = None
) -> ClusterPlan:
    """The cluster for `memory` (a one-replica plan: index bytes, usable node RAM) at `qps`."""
    if memory.index_type not in SIZED:
        raise InvalidInput(
            f"query sizing knows {', '.join(SIZED)} (measured rates); plan {memory.index_type} "
            "memory without --qps, or size with --index hnsw"
        )
    if qps <= 0 or not 0 < recall <= 1 or node_cores < 1:
        raise InvalidInput("--qps must be > 0, --recall in (0, 1], --node-cores >= 1")
    if memory.index_type != "hnsw" and recall < 1:
        recall = 1.0  # a scan is exact
    v = virtual_shards or max(8, 1 << (memory.shards - 1).bit_length())
    n = math.ceil(memory.vectors / v)
    rate = shard_qps_per_core(memory.index_type, n, memory.dim, recall)
    cpu_per_query = v / rate  # every query searches every virtual shard once
    cores = qps * cpu_per_query / UTILIZATION
    shard_bytes = memory.index_bytes / v
    replicas = max(MIN_REPLICAS, math.ceil(cores / (v * node_cores)))
    per_node = max(1, math.floor(memory.usable_bytes / shard_bytes))  # whole shards fit a node
    by_memory = math.ceil(v * replicas / per_node)
    by_cpu = math.ceil(cores / node_cores)
    nodes = max(replicas, by_memory, by_cpu)
    ef = ef_for(recall) if memory.index_type == "hnsw" else None
    knob = f"efSearch {ef} for recall@10 {recall:g}" if ef else "exact scan (recall 1)"
    lines = (
        f"virtual shards V = {v} (>= {memory.shards} memory shard(s), a power of two, >= 8 "
        "so nodes can be added a shard at a time)",
        f"vectors per shard = {memory.vectors:,} / {v} = {n:,}; "
        f"index per shard = {human_bytes(shard_bytes)}",
        f"{memory.index_type}: {knob}: {rate:,.0f} searches/s per core on one shard",
        f"CPU per query = V / rate = {v} / {rate:,.0f} = {cpu_per_query * 1000:.3f} core-ms "
        "(scatter to every shard, merge top-k)",
        f"cores = {qps:,.0f} QPS x {cpu_per_query * 1000:.3f} core-ms / {UTILIZATION:g} "
        f"utilization = {cores:,.1f}",
        f"replicas R = max({MIN_REPLICAS} to survive a node, ceil(cores / (V x {node_cores} "
        f"cores))) = {replicas}",
        f"shard replicas per node = floor({human_bytes(memory.usable_bytes)} usable / "
        f"{human_bytes(shard_bytes)}) = {per_node}",
        f"nodes = max(R = {replicas}, memory ceil(V x R / {per_node}) = {by_memory}, "
        f"CPU ceil({cores:,.1f} / {node_cores}) = {by_cpu}) = {nodes}",
    )
    return ClusterPlan(v, replicas, nodes, ef, n, rate, cores, lines)
