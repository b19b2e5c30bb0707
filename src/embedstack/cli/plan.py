"""`embedstack plan`: size a deployment - index memory per family, shards, nodes, build time.

Arithmetic (index/planner.py): no data and no server needed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from embedstack.cli.common import Command, key_values
from embedstack.types import METRICS

if TYPE_CHECKING:
    from embedstack.index.planner import Plan

DEFAULT_NODE_RAM = "64GiB"
# index.planner.HEADROOM, restated so `--help` needs no faiss import (tests/unit/test_planner.py
# checks that the two agree)
HEADROOM = 0.7
RAW_DTYPE_BYTES = 4  # float32


def _plan_params(m: int | None, nlist: int | None, nbits: int | None, hnsw_m: int | None,
                 refine: int | None, refine_bits: str | None,
                 extra: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    named = {"m": m, "nlist": nlist, "nbits": nbits, "M": hnsw_m, "refine_factor": refine,
             "refine_bits": None if refine_bits is None else int(refine_bits)}  # fmt: skip
    params: dict[str, Any] = {key: v for key, v in named.items() if v is not None}
    return params | key_values(extra, "--param")


def _plan_table(plans: list[Plan], detail: bool) -> Any:
    from rich.table import Table

    from embedstack.index.planner import human_bytes

    table = Table(title="capacity plan (one replica's index bytes; shards x replicas = nodes)")
    for name in ("index", "params", "index size", "bytes/vec", "shards", "nodes",
                 "build h (per shard)"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("index", "params") else "right")
    hidden = {"train_min", "retrain_growth", "recall_floor"}
    for p in plans:
        params = " ".join(f"{k}={v}" for k, v in p.params.items() if k not in hidden)
        table.add_row(p.index_type, params, human_bytes(p.index_bytes),
                      f"{p.bytes_per_vector:,.0f}", f"{p.shards:,}", f"{p.nodes:,}",
                      f"{p.build_seconds / 3600:,.1f}")  # fmt: skip
    if detail:
        for what, size in plans[0].components:
            table.add_row("", f"[dim]{what}[/dim]", f"[dim]{human_bytes(size)}[/dim]")
    return table


@click.command(cls=Command)
@click.option("--vectors", required=True, help="How many vectors: 1e9, 250M, 1000000.")
@click.option("--dim", type=click.IntRange(1, 65536), required=True, help="Vector dimension.")
@click.option("--index", "index_type", default=None, help="One index type (default: all).")
@click.option("--m", type=int, default=None, help="ivf_pq sub-quantizers (bytes per code).")
@click.option("--nlist", type=int, default=None, help="IVF inverted lists (default: auto).")
@click.option("--nbits", type=int, default=None, help="ivf_pq bits per sub-quantizer code.")
@click.option("--hnsw-m", type=int, default=None, help="HNSW graph degree M.")
@click.option("--refine-factor", type=int, default=None, help="ivf_pq re-ranking (0: no floats).")
@click.option("--refine-bits", type=click.Choice(["32", "16", "8"]), default=None,
              help="ivf_pq re-ranking store: float32, float16 or SQ8.")  # fmt: skip
@click.option("-p", "--param", "extra", multiple=True, help="Any index param as KEY=VALUE.")
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True)
@click.option("--node-ram", default=DEFAULT_NODE_RAM, show_default=True, help="RAM per node.")
@click.option("--headroom", type=click.FloatRange(0.05, 1), default=HEADROOM, show_default=True,
              help="Share of node RAM the index may use.")  # fmt: skip
@click.option("--metric", type=click.Choice(METRICS), default=METRICS[0], show_default=True,
              help="Distance the index serves.")  # fmt: skip
@click.option("--dtype-bytes", type=click.IntRange(1, 8), default=RAW_DTYPE_BYTES,
              show_default=True, help="Bytes per component of the raw vectors.")  # fmt: skip
@click.option("--qps", type=float, default=None,
              help="Size a cluster for this query rate: virtual shards x replicas x nodes "
              "(hnsw, flat or exact; with the arithmetic printed).")  # fmt: skip
@click.option("--recall", type=float, default=0.95, show_default=True,
              help="With --qps: recall@10 target (hnsw picks its efSearch by it).")  # fmt: skip
@click.option("--node-cores", type=click.IntRange(1), default=16, show_default=True,
              help="With --qps: CPU cores per node.")  # fmt: skip
def plan(
    vectors: str, dim: int, index_type: str | None, m: int | None, nlist: int | None,
    nbits: int | None, hnsw_m: int | None, refine_factor: int | None, refine_bits: str | None,
    extra: tuple[str, ...],
    replicas: int, node_ram: str, headroom: float, metric: str, dtype_bytes: int,
    qps: float | None, recall: float, node_cores: int,
) -> None:  # fmt: skip
    """Capacity plan: raw size, index memory per family, shards and nodes, build time.

    Memory follows what each index really holds (vectors or codes, graph links, centroids,
    codebooks, id maps; checked against built indexes by bench/plan_check.py). Shards =
    ceil(index bytes / (node RAM x headroom)); nodes = shards x replicas. Build hours are for
    one 2-core node per shard, from rates measured on the benchmark machine.
    """
    from rich.console import Console

    from embedstack.index.planner import human_bytes, parse_size, plan_all
    from embedstack.index.planner import plan as make_plan

    params = _plan_params(m, nlist, nbits, hnsw_m, refine_factor, refine_bits, extra)
    if params and index_type is None:
        raise click.UsageError("index params need --index, e.g. --index ivf_pq --m 96")
    count, ram = parse_size(vectors), parse_size(node_ram)  # InvalidInput: one line (Command)
    kwargs: dict[str, Any] = {"metric": metric, "headroom": headroom}
    if index_type:
        plans = [make_plan(count, dim, index_type, params, replicas, ram, dtype_bytes, **kwargs)]
    else:
        plans = plan_all(count, dim, replicas, ram, dtype_bytes, **kwargs)
    raw = plans[0].raw_bytes
    click.echo(
        f"{count:,} vectors x {dim} x {dtype_bytes} B = {human_bytes(raw)} raw ({raw:.3g} bytes); "
        f"node {human_bytes(ram)} x {headroom:g} usable = {human_bytes(plans[0].usable_bytes)}; "
        f"{replicas} replica(s)"
    )
    Console(width=max(120, Console().width)).print(_plan_table(plans, index_type is not None))
    for p in plans:
        for note in p.notes:
            click.echo(f"note ({p.index_type}): {note}")
    if index_type:
        _resident(plans[0], count, dim)
    if qps is not None:
        from embedstack.index.cluster_sizing import size_cluster

        sized = size_cluster(plans[0] if index_type else _hnsw(plans), qps, recall, node_cores)
        click.echo(f"\ncluster for {qps:,.0f} QPS at recall@10 >= {recall:g}, "
                   f"{node_cores}-core nodes:")  # fmt: skip
        for line in sized.lines:
            click.echo(f"  {line}")
        click.echo(f"=> {sized.virtual_shards} virtual shards x {sized.replicas} replicas on "
                   f"{sized.nodes} nodes")  # fmt: skip


def _resident(p: Plan, count: int, dim: int) -> None:
    """The resident memory of one node serving one shard, and the store's disk, with the sums."""
    from embedstack.index.planner import human_bytes, resident, store_bytes

    disk = store_bytes(count, dim)
    click.echo(f"store on disk (SQLite, each vector once): {count:,} x ({dim} x 4 + 616) B = "
               f"{human_bytes(disk)}; index snapshots beside it")  # fmt: skip
    parts = resident(p, disk // p.shards)
    click.echo("resident memory of one serving node (one shard):")
    for what, size in parts:
        click.echo(f"  {human_bytes(size):>10}  {what}")
    click.echo(f"= {human_bytes(sum(b for _, b in parts))} (a bulk load's working set comes on top "
               "while it runs)")  # fmt: skip


def _hnsw(plans: list[Plan]) -> Plan:
    return next(p for p in plans if p.index_type == "hnsw")
