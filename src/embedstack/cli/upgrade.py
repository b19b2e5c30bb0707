"""`embedstack upgrade | rollback | retire`: model upgrades driven over a running server's API."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click
import orjson
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from embedstack.cli.common import Command, url_option
from embedstack.cli.http import server
from embedstack.client import APIError, Client

# registry.upgrade.Gate's defaults, restated so `--help` needs no numpy import
# (tests/unit/test_cli_errors.py checks that they agree)
GATE_DEFAULTS: dict[str, Any] = {
    "k": 10, "min_recall": None, "max_recall_drop": 0.0, "min_overlap": 0.3, "sample_queries": 100,
}  # fmt: skip
collection_option = click.option("-c", "--collection", required=True, help="Collection or alias.")


def _read_eval(path: Path) -> list[dict[str, Any]]:
    rows = [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]
    if not rows or not all("query" in r and "document_id" in r for r in rows):
        raise click.BadParameter(f"{path}: each line needs {{'query', 'document_id'}}")
    return rows


def print_report(report: dict[str, Any]) -> None:
    table = Table(title=f"upgrade gate ({report.get('mode')}, k={report.get('k')})")
    table.add_column("space")
    if report.get("mode") == "labeled":
        table.add_column(f"recall@{report['k']}", justify="right")
        table.add_column("MRR", justify="right")
        for label in ("old", "new"):
            table.add_row(label, f"{report[label]['recall']:.4f}", f"{report[label]['mrr']:.4f}")
    elif report.get("mode") == "overlap":
        table.add_column(f"top-{report['k']} overlap", justify="right")
        table.add_row("old vs new", f"{report['overlap']:.4f}")
    Console().print(table)
    click.echo(f"gate {'passed' if report.get('passed') else 'FAILED'}")


@click.command(cls=Command)
@collection_option
@click.option("--model", required=True, help="Model of the new embedding space.")
@click.option("--eval", "eval_file", type=click.Path(path_type=Path, exists=True),
              help="JSONL of {query, document_id} pairs: gate on recall@k and MRR.")  # fmt: skip
@click.option("--k", type=int, default=GATE_DEFAULTS["k"], show_default=True,
              help="k of the gate's recall / overlap.")  # fmt: skip
@click.option("--min-recall", type=float, default=GATE_DEFAULTS["min_recall"],
              help="New space's recall@k floor (default: none).")  # fmt: skip
@click.option("--max-recall-drop", type=float, default=GATE_DEFAULTS["max_recall_drop"],
              show_default=True, help="Allowed recall@k loss.")  # fmt: skip
@click.option("--min-overlap", type=float, default=GATE_DEFAULTS["min_overlap"],
              show_default=True, help="Unlabeled gate: top-k overlap.")  # fmt: skip
@click.option("--sample-queries", type=int, default=GATE_DEFAULTS["sample_queries"],
              show_default=True, help="Unlabeled gate: sampled texts.")  # fmt: skip
@click.option("--cutover/--no-cutover", default=True, show_default=True,
              help="Cut over when the gate passes.")  # fmt: skip
@click.option("--force", is_flag=True, help="Cut over without the gate.")
@url_option
def upgrade(
    collection: str, model: str, eval_file: Path | None, k: int, min_recall: float | None,
    max_recall_drop: float, min_overlap: float, sample_queries: int, cutover: bool,
    force: bool, url: str,
) -> None:  # fmt: skip
    """Re-index a collection into a new model's space while the old one keeps serving.

    Every stored document is re-embedded from its stored text in the background (it survives
    a server restart), new writes go to both spaces, then a gate compares old and new and the
    collection flips to the new space atomically. `embedstack rollback` returns to the old one.
    """
    gate = {"k": k, "min_recall": min_recall, "max_recall_drop": max_recall_drop,
            "min_overlap": min_overlap, "sample_queries": sample_queries}  # fmt: skip
    labeled = _read_eval(eval_file) if eval_file else None
    with server(url) as client:
        _run_upgrade(client, collection, model, labeled, gate, cutover, force)


def _run_upgrade(
    client: Client, collection: str, model: str, labeled: list[dict[str, Any]] | None,
    gate: dict[str, Any], cutover: bool, force: bool,
) -> None:  # fmt: skip
    status = client.start_upgrade(collection, model, eval=labeled, gate=gate)
    click.echo(f"upgrade {status.id}: {status.from_space} -> {status.to_space}")
    columns = (TextColumn("[bold]re-embedding"), BarColumn(),
               TextColumn("{task.completed}/{task.total} docs {task.fields[rate]}"),
               TimeElapsedColumn())  # fmt: skip
    with Progress(*columns) as progress:
        task = progress.add_task("backfill", total=max(1, status.total), rate="")
        while status.state == "backfilling":
            time.sleep(0.5)
            status = client.upgrade_status(collection)
            eta = f", ETA {status.eta_s:.0f}s" if status.eta_s is not None else ""
            progress.update(task, completed=status.done,
                            rate=f"({status.rate_docs_per_s:.1f}/s{eta})")  # fmt: skip
    if status.state != "ready":
        raise click.ClickException(f"upgrade is {status.state}: {status.error}")
    if not cutover:
        click.echo("shadow index ready; cut over later with the API or run again with --cutover")
        return
    try:
        done = client.cutover(collection, force=force)
    except APIError:
        report = client.upgrade_status(collection).report
        if report:
            print_report(report)
        raise
    if done.report:
        print_report(done.report)
    click.echo(f"{collection} now serves {done.to_space} ({model})")


@click.command(cls=Command)
@collection_option
@url_option
def rollback(collection: str, url: str) -> None:
    """Serve the previous embedding space again (while it is retained) - instant."""
    with server(url) as client:
        done = client.rollback(collection)
    click.echo(f"{collection} serves {done.space_id} again")


@click.command(cls=Command)
@collection_option
@click.option("--space", default=None, help="Space id to retire (default: the previous one).")
@url_option
def retire(collection: str, space: str | None, url: str) -> None:
    """Delete a non-serving embedding space and free its vectors and index."""
    with server(url) as client:
        done = client.retire(collection, space)
    click.echo(f"retired {done.retired}")
