"""`embedstack plan --qps`: virtual shards x replicas x nodes, and the arithmetic it prints."""

from __future__ import annotations

import math

import pytest
from click.testing import CliRunner

from embedstack.cli.plan import plan as plan_command
from embedstack.errors import InvalidInput
from embedstack.index.cluster_sizing import ef_for, size_cluster
from embedstack.index.planner import parse_size, plan


def test_memory_bound_cluster_places_whole_shards() -> None:
    memory = plan(int(1e9), 768, "hnsw", None, node_ram_bytes=parse_size("256GiB"))
    c = size_cluster(memory, qps=2000, recall=0.98, node_cores=16)
    assert c.virtual_shards >= memory.shards and c.virtual_shards & (c.virtual_shards - 1) == 0
    shard = memory.index_bytes / c.virtual_shards
    per_node = math.floor(memory.usable_bytes / shard)
    assert c.nodes >= math.ceil(c.virtual_shards * c.replicas / per_node)
    assert c.replicas >= 2 and c.ef_search == 64


def test_cpu_bound_cluster_grows_with_qps_and_recall() -> None:
    memory = plan(1_000_000, 384, "hnsw", None, node_ram_bytes=parse_size("64GiB"))
    low = size_cluster(memory, qps=500, recall=0.95, node_cores=16)
    high = size_cluster(memory, qps=200_000, recall=0.95, node_cores=16)
    exact = size_cluster(memory, qps=200_000, recall=0.995, node_cores=16)
    assert low.nodes == 2  # two replicas, nothing else needed
    assert high.nodes > low.nodes and high.cores == pytest.approx(low.cores * 400)
    assert exact.cores > high.cores and ef_for(0.995) > ef_for(0.95)
    # enough replicas that every core can be used: V x R x node cores >= cores needed
    assert high.virtual_shards * high.replicas * 16 >= high.cores


def test_flat_scans_cost_grows_with_shard_size() -> None:
    small = size_cluster(plan(100_000, 384, "flat", None), qps=100, recall=1, node_cores=8)
    large = size_cluster(plan(10_000_000, 384, "flat", None), qps=100, recall=1, node_cores=8)
    assert large.cores == pytest.approx(small.cores * 100, rel=0.05)


def test_unsized_index_types_are_refused_with_the_fix() -> None:
    with pytest.raises(InvalidInput, match="--index hnsw"):
        size_cluster(plan(1_000_000, 384, "ivf_pq", None), qps=100, recall=0.9, node_cores=8)


def test_plan_command_prints_the_arithmetic() -> None:
    args = ["--vectors", "1e6", "--dim", "384", "--qps", "500"]
    out = CliRunner().invoke(plan_command, args)
    assert out.exit_code == 0, out.output
    assert (
        "CPU per query" in out.output
        and "=> 8 virtual shards x 2 replicas on 2 nodes" in out.output
    )
