"""`embedstack models list|check`: the model catalog and the accuracy gate from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from embedstack.cli.common import Group

if TYPE_CHECKING:
    from embedstack.inference.models.catalog import Catalog

CACHE_HELP = "Folder for ONNX exports and gate reports (default ~/.cache/embedstack)."


def _catalog(
    cache_dir: Path | None, queries: int | None = None, race_wait_s: float | None = None
) -> Catalog:
    from embedstack.config import Settings
    from embedstack.inference.models.catalog import Catalog
    from embedstack.inference.models.gate import load_sample
    from embedstack.inference.models.race import IDLE_WAIT_S
    from embedstack.serving.services import remote_configs

    sample = load_sample()
    remotes = remote_configs(Settings.load())  # listed without their API keys
    head = sample.head(queries) if queries else sample
    wait = IDLE_WAIT_S if race_wait_s is None else race_wait_s
    return Catalog(cache_dir, sample=head, remotes=remotes, race_wait_s=wait)


cache_option = click.option(
    "--cache-dir", type=click.Path(path_type=Path, file_okay=False), default=None, help=CACHE_HELP
)


@click.group(cls=Group)
def models() -> None:
    """The models and backends this machine offers, and their accuracy gate."""


@models.command("list")
@click.option("--queries", type=int, default=None, help="Show checks run with --queries N.")
@cache_option
def list_models(queries: int | None, cache_dir: Path | None) -> None:
    """Every model name with dim, metric, max tokens, backend, space id and measured speed.

    "<model>" is served by the fastest backend that passed the gate here (run `models check`
    first to measure); "<model>@<backend>" names one backend. Gate verdicts come from the last
    `models check` on this machine ("-" where none ran yet). Speeds come from the last speed
    race of the passing backends (same texts, interleaved: comparable); a speed marked "*" was
    measured alone when that backend was gated, maybe under another load. "batch cos" is the
    minimum cosine between a text's vectors embedded alone and in other batches (under 0.99999
    the backend is batch-dependent and refused); "same bytes" says whether the same calls twice
    gave identical vectors.
    """
    catalog = _catalog(cache_dir, queries)
    head = f"{'name':42} {'dim':>4} {'metric':6} {'max tok':>7} {'backend':26} {'precision':13} {'space id':19} {'texts/s':>8}  {'batch cos':>9} {'same bytes':10} gate"  # noqa: E501
    click.echo(head)
    for row in catalog.listing():
        s, r = row.spec, row.report
        speed = f"{'-':>8}" if row.speed is None else f"{row.speed:7.0f}"
        speed += " " if row.raced is not None or row.speed is None else "*"
        gate = "-" if r is None else ("passed" if r.passed else "REFUSED")
        inv = "-" if r is None or r.batch_min_cosine is None else f"{r.batch_min_cosine:.7f}"
        same = {None: "-", True: "yes", False: "no"}[None if r is None else r.deterministic]
        click.echo(
            f"{row.name:42} {s.dim or '-':>4} {s.metric:6} {s.max_tokens:>7} {row.backend:26} "
            f"{s.precision:13} {row.space_id:19} {speed}  {inv:>9} {same:10} {gate}"
        )
    for model in catalog.models():
        load = catalog.race_load(model)
        if load is not None:
            click.echo(f"{model}: speed race at {load.describe()}; "
                       f"`embedstack models check {model} --race` races again")  # fmt: skip


@models.command()
@click.argument("names", nargs=-1)
@click.option("--force", is_flag=True, help="Measure again even where a cached report exists.")
@click.option(
    "--queries", type=int, default=None, help="Use only the first N sample queries (faster)."
)
@click.option("--strict", is_flag=True, help="Exit 1 if any checked backend is refused.")
@click.option("--race", "race_again", is_flag=True,
              help="Race the passing backends of each model again and record the new auto "
                   "choice (waits up to --idle-wait for a quiet machine first).")  # fmt: skip
@click.option(
    "--idle-wait",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    help="Seconds a race waits for the load average to drop under 0.5 per CPU.",
)
@cache_option
def check(
    names: tuple[str, ...], force: bool, queries: int | None, strict: bool, race_again: bool,
    idle_wait: float, cache_dir: Path | None,
) -> None:  # fmt: skip
    """Gate backends against the fp32 reference on real text and record the verdicts.

    NAMES are models ("all-MiniLM-L6-v2": all its backends) or "<model>@<backend>"; none means
    every model. A backend passes when its cosine to fp32 is >= 0.999 on average and >= 0.99 at
    worst and recall@10 moves by at most 0.5 points, and when a text embedded alone and in
    other batches keeps its vector (minimum cosine >= 0.99999: batch invariance).
    """
    catalog = _catalog(cache_dir, queries)
    targets: list[tuple[str, str]] = []
    for name in names or tuple(catalog.models()):
        model, _, backend = name.partition("@")
        if backend:
            catalog.variant(model, backend)  # NotFound with the choices
            targets.append((model, backend))
        else:
            targets += [(model, v.backend) for v in catalog.variants(model)]
    refused = 0
    for model, backend in targets:
        try:
            report = catalog.check(model, backend, force=force)
        except Exception as exc:
            click.echo(f"{model} on {backend}: could not run ({type(exc).__name__}: {exc})")
            refused += 1
            continue
        refused += not report.passed
        click.echo(f"{report.summary()}; {report.texts_per_s:.0f} texts/s")
    if race_again:
        catalog = _catalog(cache_dir, queries, race_wait_s=idle_wait)
        for model in dict.fromkeys(m for m, _ in targets):
            choice = catalog.choose(model, force_race=True)
            speeds = catalog.race_speeds(model)
            load = catalog.race_load(model)
            ranked = ", ".join(
                f"{b} {v:.0f}" for b, v in sorted(speeds.items(), key=lambda x: -x[1])
            )
            where = f" at {load.describe()}" if load else ""
            click.echo(
                f"{model}: auto serves {choice}{where} (texts/s: {ranked or 'one passing backend'})"
            )
    if refused and strict:
        raise SystemExit(1)
