"""`embedstack eval`: retrieval quality of each query mode and document scoring, side by side,
on a labeled JSONL set, through a running server's query endpoint (registry/evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import click
import httpx

from embedstack.cli.common import url_option
from embedstack.errors import EmbedStackError
from embedstack.registry.evaluate import (
    Setting,
    default_settings,
    evaluate,
    format_table,
    http_searcher,
    load_labels,
)


@click.command("eval")
@click.option("-c", "--collection", required=True, help="Collection or alias.")
@click.option(
    "--labels", "labels_path", required=True, type=click.Path(path_type=Path, exists=True),
    help='JSONL, one {"query": ..., "relevant": [document ids]} per line.',
)  # fmt: skip
@click.option("-k", "--k", type=int, default=10, help="Cut-off of recall, MRR and nDCG.")
@click.option("--modes", default="dense,lexical,hybrid", help="Comma-separated modes to compare.")
@click.option("--alpha", type=float, default=None, help="Hybrid: weight of dense (0..1).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON rows instead of a table.")
@url_option
def eval_command(
    collection: str, labels_path: Path, k: int, modes: str, alpha: float | None, as_json: bool,
    url: str,
) -> None:  # fmt: skip
    """Compare recall@k, MRR and nDCG@k of every mode x document scoring on a labeled set."""
    try:
        labels = load_labels(labels_path)
    except EmbedStackError as exc:
        raise click.ClickException(str(exc)) from exc
    wanted = [m.strip() for m in modes.split(",") if m.strip()]
    settings = [
        Setting(s.mode, s.fusion, alpha if s.mode == "hybrid" else None, s.doc_scoring)
        for s in default_settings(wanted)
    ]
    with httpx.Client(base_url=url, timeout=120) as client:
        try:
            results = evaluate(http_searcher(client, collection), labels, settings, k)
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise click.ClickException(
                f"cannot reach {url}/v1/collections/{collection}/query ({reason}): "
                "is `embedstack serve` running there? (--url)"
            ) from exc
        except RuntimeError as exc:
            raise click.ClickException(str(exc)) from exc
    if as_json:
        for r in results:
            click.echo(json.dumps(r.row()))
        return
    click.echo(f"{collection}: {len(labels)} queries, k={k}")
    click.echo(format_table(results, k))
