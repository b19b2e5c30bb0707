"""`embedstack query`: search a collection on a running server and print the hits."""

from __future__ import annotations

from typing import Any

import click
import orjson

from embedstack.cli.common import Command, key_values, url_option
from embedstack.cli.http import server

DEFAULT_K = 5  # a screenful; the API's own default is 10


@click.command(cls=Command)
@click.argument("text")
@click.option("-c", "--collection", required=True, help="Collection (or alias) to search.")
@click.option("-k", type=click.IntRange(1), default=DEFAULT_K, show_default=True,
              help="How many hits.")  # fmt: skip
@click.option(
    "--filter", "filter_json", default=None, help='Metadata filter, e.g. \'{"lang": "en"}\'.'
)
@click.option("--group-by-document", is_flag=True, help="Best chunk of each of the top documents.")
@click.option(
    "-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
    help="A search parameter of the collection's index for this query (repeatable), e.g. "
    "--param nprobe=64 --param refine_factor=32 (ivf_pq); ef_search (hnsw), nprobe "
    "(ivf_flat, ivf_pq), refine_factor (ivf_pq), rescore (binary), leaves_to_search and "
    "reorder (scann). Default: the index's own.",
)  # fmt: skip
@url_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON response.")
def query(
    text: str, collection: str, k: int, filter_json: str | None, group_by_document: bool,
    params: tuple[str, ...], url: str, as_json: bool,
) -> None:  # fmt: skip
    """Search a collection on a running server and print the hits as a table.

    TEXT is embedded by the server in the collection's model space; hits show score, document
    id and the matching chunk's text.
    """
    from rich.console import Console
    from rich.table import Table

    flt: dict[str, Any] | None = None
    if filter_json:
        try:
            flt = orjson.loads(filter_json)
        except orjson.JSONDecodeError as exc:
            raise click.BadParameter(f"not valid JSON: {exc}", param_hint="--filter") from exc
    knobs = key_values(params, "--param") or None
    with server(url) as client:
        found = client.query(collection, text, k=k, filter=flt, params=knobs,
                             group_by="document" if group_by_document else None)  # fmt: skip
    data = found.model_dump(mode="json")
    if as_json:
        click.echo(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
        return
    table = Table(title=f"{collection}: {text!r} ({data['took_ms']} ms)")
    table.add_column("#", justify="right")
    table.add_column("score", justify="right")
    table.add_column("document")
    table.add_column("text", overflow="fold")
    for i, hit in enumerate(data["hits"], start=1):
        snippet = " ".join(hit["text"].split())[:200]
        table.add_row(str(i), f"{hit['score']:.4f}", hit["document_id"], snippet)
    Console().print(table)
