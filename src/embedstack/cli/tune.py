"""`embedstack tune`: pick an index for a collection by measuring it on its own vectors.

Reads a sample of a collection's stored vectors straight from the data dir's store (read only),
measures a grid of index configurations against exact search (index/tuner.py) and applies the
cheapest one that meets the recall floor through the server's API.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import orjson

from embedstack.cli.common import Command, data_dir_option, url_option
from embedstack.cli.http import server

if TYPE_CHECKING:
    import numpy as np

    from embedstack.index.tuner import Measurement, Outcome


# -- tune: sampling -------------------------------------------------------------------------------
def read_sample(
    data_dir: Path, collection: str, base_n: int, query_n: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int, str]:
    """(base ids, base vectors, held-out query vectors, total vectors, dim, metric) sampled
    from the collection's serving space in the store; queries are removed from the base."""
    import numpy as np

    from embedstack.storage.store import Store

    path = data_dir / "store.db"
    if not path.exists():
        raise click.ClickException(f"no store at {path}: pass the server's --data-dir")
    store = Store(path)
    try:
        record = store.get_collection(collection)
        dim, metric = record.config.dim, record.config.metric
        all_ids = np.asarray(store.all_chunk_ids(collection, record.space_id), dtype=np.int64)
        total = len(all_ids)
        if total < 2:
            raise click.ClickException(f"{collection} has {total} vectors: add some first")
        rng = np.random.default_rng(seed)
        query_n = min(query_n, max(1, total // 5))
        picked = rng.permutation(all_ids)[: min(total, base_n + query_n)]
        wanted = np.sort(picked)
        ids_parts, vec_parts = [], []
        for ids, vecs in store.iter_vectors(collection, record.space_id, dim):
            keep = np.isin(ids, wanted, assume_unique=True)
            ids_parts.append(ids[keep])
            vec_parts.append(vecs[keep])
    finally:
        store.close()
    ids, vecs = np.concatenate(ids_parts), np.concatenate(vec_parts).astype(np.float32)
    order = rng.permutation(len(ids))
    q_rows, b_rows = order[:query_n], np.sort(order[query_n:])
    return ids[b_rows], vecs[b_rows], vecs[q_rows], total, dim, metric


def read_query_log(path: Path, dim: int, metric: str) -> np.ndarray:
    """Query vectors from a .npy (q, dim) array or a JSONL file with a "vector" per line."""
    import numpy as np

    if path.suffix == ".npy":
        queries = np.load(path, allow_pickle=False)
    else:
        lines = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
        queries = np.asarray([line["vector"] for line in lines], dtype=np.float32)
    if queries.ndim != 2 or queries.shape[1] != dim or len(queries) == 0:
        raise click.BadParameter(f"{path}: need (q, {dim}) query vectors, got {queries.shape}")
    queries = queries.astype(np.float32)
    if metric == "cosine":
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return queries


# -- tune: output ---------------------------------------------------------------------------------
def _tune_table(outcomes: list[Outcome], chosen: Measurement | None, floor: float,
                p99_target: float | None, k: int) -> Any:  # fmt: skip
    from rich.table import Table

    from embedstack.index.planner import human_bytes
    from embedstack.index.tuner import Failure

    table = Table(title=f"index configurations (recall floor {floor}, k={k})")
    for name in ("", "configuration", f"recall@{k}", "p50 ms", "p99 ms", "QPS", "bytes/vec",
                 "memory", "build s"):  # fmt: skip
        table.add_column(name, justify="left" if name in ("", "configuration") else "right")
    for o in outcomes:
        if isinstance(o, Failure):
            label = f"{o.index_type} " + " ".join(f"{k_}={v}" for k_, v in o.params.items())
            table.add_row("", label, f"[dim]skipped: {o.reason}[/dim]")
            continue
        recall = f"{o.recall:.3f}" if o.recall >= floor else f"[red]{o.recall:.3f}[/red]"
        slow = p99_target is not None and o.p99_ms > p99_target
        p99 = f"[red]{o.p99_ms:.2f}[/red]" if slow else f"{o.p99_ms:.2f}"
        mark = "[bold green]>>[/bold green]" if o is chosen else ""
        table.add_row(
            mark, o.label, recall, f"{o.p50_ms:.2f}", p99, f"{o.qps:,.0f}",
            f"{o.bytes_per_vector:,.0f}", human_bytes(o.memory_bytes), f"{o.build_s:.1f}",
            style="bold" if o is chosen else None,
        )  # fmt: skip
    return table


def explain(chosen: Measurement, outcomes: list[Outcome], floor: float, p99: float | None,
            total: int) -> str:  # fmt: skip
    from embedstack.index.tuner import Measurement

    measured = [o for o in outcomes if isinstance(o, Measurement)]
    passing = [m for m in measured if m.passes(floor, p99)]
    limit = f" and p99 <= {p99:g} ms" if p99 is not None else ""
    flat = next((m for m in measured if m.index_type == "flat"), None)
    saving = (
        f", {flat.bytes_per_vector / chosen.bytes_per_vector:.1f}x less than flat"
        if flat and chosen.index_type != "flat" and chosen.bytes_per_vector else ""
    )  # fmt: skip
    text = (
        f"Chose {chosen.label}: the least memory per vector ({chosen.bytes_per_vector:,.0f} B"
        f"{saving}) of the {len(passing)} of {len(measured)} configurations with recall@"
        f"{chosen.k} >= {floor:g}{limit}; it measured recall@{chosen.k} {chosen.recall:.3f}, "
        f"p99 {chosen.p99_ms:.2f} ms and {chosen.qps:,.0f} QPS on {chosen.n:,} sampled vectors."
    )
    if chosen.index_type in ("flat", "sq8", "exact") and total > chosen.n:
        grown = chosen.p99_ms * total / chosen.n
        text += (
            f" It scans every vector, so at the collection's {total:,} its p99 grows to about "
            f"{grown:.2f} ms" + (": pass --p99-ms to bound it." if p99 is None else ".")
        )
    return text


def _refusal(outcomes: list[Outcome], floor: float, p99: float | None, k: int) -> str:
    from embedstack.index.tuner import Measurement

    measured = [o for o in outcomes if isinstance(o, Measurement)]
    limit = f" within p99 {p99:g} ms" if p99 is not None else ""
    if not measured:
        return "no configuration could be measured (see the table)"
    fast = [m for m in measured if p99 is None or m.p99_ms <= p99] or measured
    best = max(fast, key=lambda m: m.recall)
    return (
        f"no configuration reached recall@{k} >= {floor:g}{limit}: the best, {best.label}, "
        f"measured recall@{k} {best.recall:.3f} (p99 {best.p99_ms:.2f} ms). Lower --recall-floor, "
        "raise --p99-ms, or try larger parameters"
    )


# -- tune -----------------------------------------------------------------------------------------
@click.command(cls=Command)
@click.option("-c", "--collection", required=True, help="Collection whose vectors to sample.")
@click.option("--recall-floor", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="Least recall@k (vs exact search) a configuration must reach.")  # fmt: skip
@click.option("--k", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--p99-ms", type=float, default=None, help="Latency target for one query's p99.")
@click.option("--sample", type=click.IntRange(100), default=50_000, show_default=True,
              help="Base vectors sampled from the collection.")  # fmt: skip
@click.option("--queries", "query_n", type=click.IntRange(1), default=500, show_default=True,
              help="Queries: stored vectors held out of the base.")  # fmt: skip
@click.option("--query-log", type=click.Path(path_type=Path, exists=True, dir_okay=False),
              help="Real queries instead: .npy (q, dim) or JSONL with a 'vector'.")  # fmt: skip
@click.option("--types", default=None, help="Comma-separated index types to try (default: all).")
@click.option("--seed", type=int, default=0, help="Sampling seed.")
@click.option(
    "--apply", is_flag=True, help="Switch the collection to the choice (server rebuilds)."
)
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the measurements as JSON.")
@data_dir_option
def tune(
    collection: str, recall_floor: float, k: int, p99_ms: float | None, sample: int,
    query_n: int, query_log: Path | None, types: str | None, seed: int, apply: bool, url: str,
    as_json: bool, data_dir: Path | None,
) -> None:  # fmt: skip
    """Measure index configurations on a collection's own vectors and pick the cheapest.

    Samples stored vectors (queries are held-out stored vectors, or --query-log), computes exact
    top-k, and measures every index family with quantization on and off at a few parameter
    points: recall@k, p50/p99 latency, QPS, memory per vector, build time. The choice is the
    least memory per vector (then the lowest p99) that meets --recall-floor and --p99-ms;
    --apply sends it to the server, which rebuilds in the background and swaps atomically.
    """
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from embedstack.config import Settings
    from embedstack.index.tuner import (
        candidate_grid,
        choose,
        evaluate_grid,
        exact_neighbors,
        index_config,
    )

    data_dir = data_dir or Settings.load(None).data_dir
    base_ids, base, queries, total, dim, metric = read_sample(
        data_dir, collection, sample, 0 if query_log else query_n, seed
    )
    if query_log:
        queries = read_query_log(query_log, dim, metric)[:query_n]
    grid = candidate_grid(len(base_ids), dim, types.split(",") if types else None)
    if not grid:
        raise click.ClickException(f"no index type to try in {types!r}")
    err = Console(stderr=True)
    err.print(f"{collection}: {total:,} vectors of dim {dim} ({metric}); measuring "
              f"{len(grid)} configurations on {len(base_ids):,} of them with {len(queries)} "
              "queries")  # fmt: skip
    outcomes: list[Outcome] = []
    columns = (TextColumn("{task.description}"), BarColumn(),
               TextColumn("{task.completed}/{task.total}"), TimeElapsedColumn())  # fmt: skip
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task("exact ground truth", total=len(grid))
        truth = exact_neighbors(base_ids, base, queries, k, metric)
        progress.update(task, description=f"{grid[0][0]}")
        for i, outcome in enumerate(evaluate_grid(grid, dim, metric, base_ids, base, queries,
                                                  k, truth)):  # fmt: skip
            outcomes.append(outcome)
            upcoming = grid[i + 1][0] if i + 1 < len(grid) else "done"
            progress.update(task, advance=1, description=upcoming)
    chosen = choose(outcomes, recall_floor, p99_ms)
    if as_json:
        rows = [{**asdict(o), "chosen": o is chosen} for o in outcomes]
        click.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
    else:
        Console().print(_tune_table(outcomes, chosen, recall_floor, p99_ms, k))
    if chosen is None:
        raise click.ClickException(_refusal(outcomes, recall_floor, p99_ms, k))
    click.echo(explain(chosen, outcomes, recall_floor, p99_ms, total), err=as_json)
    body = {"index": index_config(chosen, recall_floor)}
    if not apply:
        sent = orjson.dumps(body).decode()
        click.echo(f"Not applied; run again with --apply to send {sent}", err=as_json)
        return
    with server(url) as client:
        client.update_index(collection, body["index"])
    click.echo(f"Applied: {collection} is rebuilding its index as {chosen.label}", err=as_json)
