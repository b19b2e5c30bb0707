"""Capacity planner: raw size, shard math, sizes, and the formulas against small real indexes."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from embedstack.cli import plan as plan_module
from embedstack.cli.plan import plan as plan_command
from embedstack.errors import InvalidInput
from embedstack.index.factory import create_index
from embedstack.index.planner import (
    HEADROOM,
    STORE_ROW_BYTES,
    human_bytes,
    parse_size,
    plan,
    plan_all,
    resident,
    store_bytes,
)


def test_raw_size_of_a_billion_768_dim_vectors() -> None:
    p = plan(int(1e9), 768, "ivf_pq", {"m": 96, "refine_factor": 0}, replicas=2,
             node_ram_bytes=parse_size("64GiB"))  # fmt: skip
    assert p.raw_bytes == pytest.approx(3.07e12, rel=0.001)
    assert human_bytes(p.raw_bytes) == "2.79 TiB"
    # 96-byte codes + 8-byte list ids + 25-byte id map per vector, plus centroids per shard
    assert 129 <= p.bytes_per_vector < 140
    assert p.nodes == 2 * p.shards
    assert dict(p.components)["PQ codes + list ids"] == int(1e9) * 104


def test_shards_are_index_bytes_over_usable_node_ram() -> None:
    n, d = 1_000_000, 128
    p = plan(n, d, "flat", None, replicas=3, node_ram_bytes=100_000_000, headroom=1.0)
    assert p.index_bytes == n * (d * 4 + 25)
    assert p.shards == math.ceil(p.index_bytes / 100_000_000) == 6
    assert p.nodes == 18 and p.usable_bytes == 100_000_000
    half = plan(n, d, "flat", None, node_ram_bytes=200_000_000, headroom=0.5)
    assert half.shards == 6  # only 70% or 50% of a node is for the index
    ivf = plan(n, d, "ivf_flat", {"nlist": 50_000}, node_ram_bytes=100_000_000, headroom=1.0)
    assert ivf.shards == math.ceil(ivf.index_bytes / 100_000_000) == 12
    assert ivf.shards > math.ceil(n * (d * 4 + 8 + 25) / 100_000_000)  # centroids per shard
    with pytest.raises(InvalidInput, match="cannot fit"):
        plan(n, d, "ivf_pq", {"nlist": 60000, "refine_factor": 0}, node_ram_bytes=10_000_000)


@pytest.mark.parametrize(("text", "expected"), [
    ("64GiB", 64 * 2**30), ("64Gi", 64 * 2**30), ("64GB", 64 * 10**9), ("64G", 64 * 10**9),
    ("1.5TiB", int(1.5 * 2**40)), ("512 MiB", 512 * 2**20), ("1e9", 10**9), ("250M", 250 * 10**6),
    ("4096", 4096), ("2kib", 2048),
])  # fmt: skip
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["lots", "64XB", "GiB", "", "-5GiB", "64iB"])
def test_parse_size_rejects_nonsense(text: str) -> None:
    with pytest.raises(InvalidInput, match="64GiB"):
        parse_size(text)


def test_every_family_is_planned_and_build_time_grows_with_n() -> None:
    small = {(p.index_type, p.params.get("refine_factor")): p for p in plan_all(10**6, 384)}
    big = {(p.index_type, p.params.get("refine_factor")): p for p in plan_all(10**8, 384)}
    assert ("ivf_pq", 0) in small and ("hnsw", None) in small
    for key, p in small.items():
        assert 0 < p.build_seconds <= big[key].build_seconds * big[key].shards, key
    assert small[("sq8", None)].bytes_per_vector < small[("flat", None)].bytes_per_vector


CASES: list[tuple[str, dict[str, Any], str]] = [
    ("flat", {}, "cosine"), ("exact", {}, "ip"), ("hnsw", {"M": 12}, "l2"),
    ("hnsw_sq8", {"M": 8, "recall_floor": 0}, "cosine"), ("sq8", {"recall_floor": 0}, "l2"),
    ("ivf_flat", {"nlist": 32, "recall_floor": 0}, "cosine"),
    ("ivf_pq", {"nlist": 16, "m": 8, "nbits": 4, "refine_factor": 2, "recall_floor": 0}, "ip"),
    ("ivf_pq", {"nlist": 16, "m": 4, "nbits": 4, "refine_factor": 0, "recall_floor": 0}, "l2"),
]  # fmt: skip


@pytest.mark.parametrize(("index_type", "params", "metric"), CASES)
def test_formulas_match_small_real_indexes(
    index_type: str, params: dict[str, Any], metric: str
) -> None:
    n, d = 2000, 32
    vecs = np.random.default_rng(1).normal(size=(n, d)).astype(np.float32)
    index = create_index(index_type, d, metric, params)
    index.add(np.arange(n, dtype=np.int64), vecs)
    estimate = plan(n, d, index_type, params, node_ram_bytes=2**40, metric=metric).index_bytes
    assert estimate == pytest.approx(index.memory_bytes(), rel=0.15)


def test_plan_command_details_one_family() -> None:
    runner = CliRunner()
    one = runner.invoke(plan_command, ["--vectors", "1e9", "--dim", "768", "--index", "ivf_pq",
                                       "--m", "96", "--refine-factor", "0"])  # fmt: skip
    assert one.exit_code == 0, one.output
    assert "PQ codes" in one.output and "coarse centroids" in one.output and "GiB" in one.output
    loose = runner.invoke(plan_command, ["--vectors", "1e9", "--dim", "768", "--m", "96"])
    assert loose.exit_code != 0 and "--index" in loose.output
    bad = runner.invoke(plan_command, ["--vectors", "1e9", "--dim", "768", "--node-ram", "lots"])
    assert bad.exit_code != 0 and "64GiB" in bad.output
    odd = runner.invoke(plan_command, ["--vectors", "1e6", "--dim", "768", "--index", "ivf_pq",
                                       "--m", "7"])  # fmt: skip
    assert odd.exit_code != 0 and "divide" in odd.output


def test_cli_headroom_default_is_the_planners() -> None:
    assert plan_module.HEADROOM == HEADROOM  # restated in cli/plan.py to keep --help fast


def test_sq8_refine_store_is_a_quarter_and_resident_memory_adds_the_server() -> None:
    base = {"nlist": 2048, "m": 48}
    floats = plan(10**7, 384, "ivf_pq", base, node_ram_bytes=24 * 2**30)
    sq8 = plan(10**7, 384, "ivf_pq", {**base, "refine_bits": 8}, node_ram_bytes=24 * 2**30)
    parts = dict(sq8.components)
    assert (
        parts["SQ8 refine store"]
        == 10**7 * 384
        == dict(floats.components)["float32 refine store"] // 4
    )
    assert sq8.index_bytes < 5 * 2**30 < floats.index_bytes
    store = store_bytes(10**7, 384)
    assert store == 10**7 * (384 * 4 + STORE_ROW_BYTES)
    rss = resident(sq8, store)
    assert sum(b for what, b in rss if what.startswith("index: ")) == sq8.index_bytes
    extra = dict(rss)
    assert extra["server process (Python, libraries, empty collection)"] == 250 * 2**20
    assert extra["store memory map (min(store file, mmap_size))"] == 256 * 2**20  # capped
    assert dict(resident(sq8, 10**6))["store memory map (min(store file, mmap_size))"] == 10**6
    out = CliRunner().invoke(plan_command, ["--vectors", "10M", "--dim", "384", "--index",
                                            "ivf_pq", "--nlist", "2048", "--refine-bits", "8"])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "SQ8 refine store" in out.output and "resident memory of one serving node" in out.output
    assert "4.84 GiB" in out.output and "store on disk" in out.output
