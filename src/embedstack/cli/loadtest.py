"""`embedstack loadtest` and `embedstack characterize`: the seed's scaling checklist against a
running server (the work is in embedstack.loadtest)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click
import orjson

from embedstack.cli.common import Command, setting_default, url_option
from embedstack.cli.http import server
from embedstack.client._core import settings as client_settings
from embedstack.loadtest.workload import Mix, WorkloadError

DEFAULT_RESULT = Path("characterize.json")


def _common(f: Any) -> Any:
    for option in reversed([
        url_option,
        click.option("--api-key", envvar="EMBEDSTACK_API_KEY", default=None,
                     help="API key (default $EMBEDSTACK_API_KEY): read for queries, write for "
                     "ingest, metrics for characterize's scrapes of /metrics."),
        click.option("--collection", "-c", default="loadtest", show_default=True,
                     help="Collection to load; created and filled from the corpus when absent."),
        click.option("--corpus", type=click.Path(path_type=Path, exists=True), default=None,
                     help="Texts: a .jsonl with a 'text' per line, a text file or a directory "
                     "(paragraphs). Queries are 4-12-word snippets of them. Default: generated."),
        click.option("--corpus-limit", type=click.IntRange(1), default=2000, show_default=True,
                     help="At most this many corpus paragraphs (and seed documents)."),
        click.option("-k", type=click.IntRange(1), default=10, show_default=True,
                     help="Hits per query."),
        click.option("--timeout", type=click.FloatRange(0.1), default=30.0, show_default=True,
                     help="Seconds before a request counts as an error."),
        click.option("--budget-ms", type=click.FloatRange(0.1), default=None,
                     help="Latency budget sent with each query (budget_ms): the server refuses "
                     "with 429 a query it predicts would miss it. Default: the server's own."),
        click.option("--max-inflight", type=click.IntRange(1), default=1024, show_default=True,
                     help="The generator's own bound on open requests (beyond it a due request "
                     "is counted as not sent, a failure)."),
    ]):  # fmt: skip
        f = option(f)
    return f


def _workload(url: str, api_key: str | None, collection: str, corpus: Path | None,
              limit: int) -> tuple[dict[str, str], list[str], list[str], str, int]:  # fmt: skip
    from embedstack.loadtest.workload import load_corpus, prepare_collection, queries_from

    try:
        texts, described = load_corpus(corpus, limit)
    except WorkloadError as exc:
        raise click.BadParameter(str(exc), param_hint="--corpus") from exc
    headers = client_settings(url, api_key, 30.0, 3, 0.5, 1, 1, 1).headers
    with server(url, api_key) as client:
        docs, chunks, created = prepare_collection(client, collection, texts)
    click.echo(f"collection {collection!r}: {docs} documents, {chunks} chunks"
               + (f" (created from {described})" if created else "") + f"; texts: {described}",
               err=True)  # fmt: skip
    return headers, texts, queries_from(texts, 5000, seed=3), described, docs


def _mix(text: str) -> Mix:
    try:
        return Mix.parse(text)
    except WorkloadError as exc:
        raise click.BadParameter(str(exc), param_hint="--mix") from exc


@click.command(cls=Command)
@_common
@click.option(
    "--qps",
    type=click.FloatRange(0.1),
    default=None,
    help="Offered rate, requests per second (open loop: constant arrivals).",
)
@click.option(
    "--duration",
    type=click.FloatRange(0.5),
    default=30.0,
    show_default=True,
    help="Seconds of load.",
)
@click.option(
    "--mix",
    "mix_text",
    default="query=1",
    show_default=True,
    help="Operation shares, e.g. query=0.9,ingest=0.1 (operations: query, ingest, embed).",
)
@click.option(
    "--at",
    default=None,
    help="Run at a multiple of the peak, e.g. 2x-peak, and give a PASS/FAIL verdict "
    "(exit 1 on FAIL). The peak: --peak-qps, else the --characterized file.",
)
@click.option(
    "--peak-qps",
    type=click.FloatRange(0.1),
    default=None,
    help="The peak for --at (default: the one `embedstack characterize` saved).",
)
@click.option(
    "--characterized",
    type=click.Path(path_type=Path),
    default=DEFAULT_RESULT,
    show_default=True,
    help="Where `embedstack characterize` saved its result.",
)
@click.option(
    "--sla-p99-ms",
    type=click.FloatRange(0.1),
    default=100.0,
    show_default=True,
    help="p99 SLA for the --at verdict.",
)
@click.option(
    "--max-failed",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="For the verdict: at most this share of requests refused (429) or failed.",
)
@click.option(
    "--png",
    type=click.Path(path_type=Path),
    default=Path("loadtest.png"),
    show_default=True,
    help="Latency plot (needs matplotlib: embedstack[bench]).",
)
@click.option(
    "--json",
    "json_out",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the result as JSON to this file.",
)
def loadtest(
    url: str, api_key: str | None, collection: str, corpus: Path | None, corpus_limit: int,
    k: int, timeout: float, budget_ms: float | None, max_inflight: int, qps: float | None,
    duration: float, mix_text: str, at: str | None, peak_qps: float | None, characterized: Path,
    sla_p99_ms: float, max_failed: float, png: Path, json_out: Path | None,
) -> None:  # fmt: skip
    """Open-loop load against a running server, with HDR latency percentiles.

    Requests arrive at a constant rate whatever the server does, and each latency counts from
    the request's scheduled send time, so a stalled server shows up as latency (no coordinated
    omission). Prints p50/p90/p99/p99.9 per operation, 429s and errors, the achieved against
    the offered rate, and the generator's own send lag and CPU (it shares the machine); writes
    a PNG of the latency distribution and timeline.

    With --at 2x-peak it runs at twice the characterized peak and prints a PASS/FAIL verdict
    against --sla-p99-ms with the evidence; the exit status is 1 on FAIL.
    """
    from rich.console import Console

    from embedstack.loadtest import report
    from embedstack.loadtest.run import LoadSpec, run_load
    from embedstack.loadtest.verdict import (
        characterized_corpus,
        characterized_peak,
        multiple,
        verdict,
    )

    mix = _mix(mix_text)
    factor = peak = None
    try:
        if at is not None:
            factor = multiple(at)
            peak = peak_qps if peak_qps is not None else characterized_peak(characterized)
            if corpus is None and peak_qps is None:  # the texts the peak was measured with
                corpus = characterized_corpus(characterized)
            qps = factor * peak
    except WorkloadError as exc:
        raise click.BadParameter(str(exc), param_hint="--at") from exc
    if qps is None:
        raise click.UsageError("give the rate with --qps (or --at 2x-peak for a verdict)")
    headers, texts, queries, _, _ = _workload(url, api_key, collection, corpus, corpus_limit)
    spec = LoadSpec(url, qps, duration, mix, collection, headers, k, timeout, max_inflight,
                    budget_ms=budget_ms)  # fmt: skip
    result = asyncio.run(run_load(spec, texts, queries))
    console = Console()
    console.print(report.table(result))
    click.echo(report.write_png(result, png), err=True)
    out: dict[str, Any] = result.to_dict()
    code = 0
    if factor is not None and peak is not None:
        out = verdict(result, peak, factor, sla_p99_ms, max_failed)
        click.echo(f"\nSLA verdict at {factor:g}x peak ({peak:.1f} -> {qps:.1f} req/s, p99 SLA "
                   f"{sla_p99_ms:g} ms): {out['verdict']}")  # fmt: skip
        for line in out["evidence"]:
            click.echo(f"  {line}")
        code = 0 if out["verdict"] == "PASS" else 1
    if json_out is not None:
        json_out.write_bytes(orjson.dumps(out, option=orjson.OPT_INDENT_2))
    if code:
        raise click.exceptions.Exit(code)


@click.command(cls=Command)
@_common
@click.option(
    "--mix",
    "mix_text",
    default="query=1",
    show_default=True,
    help="Operation shares of every step (see `embedstack loadtest --help`).",
)
@click.option(
    "--sla-p99-ms",
    type=click.FloatRange(0.1),
    default=100.0,
    show_default=True,
    help="The p99 a step must meet to count as sustainable.",
)
@click.option(
    "--start-qps",
    type=click.FloatRange(0.1),
    default=5.0,
    show_default=True,
    help="Rate of the first step.",
)
@click.option(
    "--factor",
    type=click.FloatRange(1.05),
    default=1.5,
    show_default=True,
    help="Each step offers this many times the last one.",
)
@click.option(
    "--step-s",
    type=click.FloatRange(0.5),
    default=10.0,
    show_default=True,
    help="Seconds per step.",
)
@click.option(
    "--max-steps",
    type=click.IntRange(1, 50),
    default=12,
    show_default=True,
    help="At most this many geometric steps (bounded).",
)
@click.option(
    "--refine",
    type=click.IntRange(0, 10),
    default=2,
    show_default=True,
    help="Bisections between the last passing and the first failing rate.",
)
@click.option(
    "--max-failed",
    type=click.FloatRange(0, 1),
    default=0.01,
    show_default=True,
    help="A step passes with at most this share refused (429) or failed.",
)
@click.option(
    "--search-threads",
    type=click.IntRange(1),
    default=setting_default("search_threads"),
    show_default=True,
    help="The server's search threads (for index utilization).",
)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=DEFAULT_RESULT,
    show_default=True,
    help="Where to save the result (JSON) for `loadtest --at 2x-peak`.",
)
def characterize(
    url: str, api_key: str | None, collection: str, corpus: Path | None, corpus_limit: int,
    k: int, timeout: float, budget_ms: float | None, max_inflight: int, mix_text: str,
    sla_p99_ms: float,
    start_qps: float, factor: float, step_s: float, max_steps: int, refine: int,
    max_failed: float, search_threads: int, out: Path,
) -> None:  # fmt: skip
    """Find the peak sustainable rate at a p99 SLA and the layer that constrains it.

    Steps the offered rate up geometrically (open-loop load, as `embedstack loadtest`) until a
    step misses the SLA (p99, at most --max-failed refused or failed, 95% of the offered rate
    achieved), then bisects --refine times. Around each step it scrapes the server's /metrics
    (so the key needs the metrics scope) and splits the query latency into layers --
    admission/queue wait, inference, index search, store/hydrate -- from
    embedstack_stage_seconds (or, on a server without it, from the forward and search
    histograms, saying so), with each layer's utilization, and names the constrained one.
    Saves the result to --out for `embedstack loadtest --at 2x-peak`.
    """
    from embedstack.loadtest.characterize import Stepping
    from embedstack.loadtest.characterize import characterize as run_characterize
    from embedstack.loadtest.run import LoadSpec

    mix = _mix(mix_text)
    headers, texts, queries, described, _ = _workload(url, api_key, collection, corpus,
                                                      corpus_limit)  # fmt: skip
    stepping = Stepping(sla_p99_ms, start_qps, factor, step_s, max_steps, refine, max_failed,
                        search_threads)  # fmt: skip
    base = LoadSpec(url, start_qps, step_s, mix, collection, headers, k, timeout, max_inflight,
                    budget_ms=budget_ms)  # fmt: skip
    with server(url, api_key) as client:
        found = run_characterize(client, base, texts, queries, stepping,
                                 say=lambda line: click.echo(line, err=True))  # fmt: skip
    found["corpus"] = described
    found["corpus_path"] = str(corpus.resolve()) if corpus is not None else None
    out.write_bytes(orjson.dumps(found, option=orjson.OPT_INDENT_2))
    _print_characterization(found)
    click.echo(f"saved to {out}", err=True)


def _print_characterization(found: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    steps = Table(title=f"characterize {found['url']} ({found['collection']}, {found['mix']}): "
                  f"{found['documents']} documents, {found['chunks']} chunks; p99 SLA "
                  f"{found['sla_p99_ms']:g} ms")  # fmt: skip
    for col in ("offered/s", "achieved/s", "p50 ms", "p99 ms", "429", "errors", "CPU %", ""):
        steps.add_column(col, justify="right")
    for s in found["steps"]:
        steps.add_row(f"{s['qps']:.1f}", f"{s['achieved_qps']:.1f}", _f(s["p50_ms"]),
                      _f(s["p99_ms"]), str(s["rejected_429"]), str(s["errors"]),
                      _f(s["machine_cpu_pct"], 0), "pass" if s["passed"] else "FAIL")  # fmt: skip
    console.print(steps)
    peak = found["peak"]
    if peak is None:
        console.print(found.get("note", "no peak found"))
        return
    console.print(f"peak sustainable: {peak['qps']:.1f} req/s (p50 {_f(peak['p50_ms'])} ms, "
                  f"p99 {_f(peak['p99_ms'])} ms)" + (f"; {found['note']}" if "note" in found
                                                    else ""))  # fmt: skip
    b = found["bottleneck"]
    layers = Table(title=f"layers at the peak (mean query {_f(b['query_mean_ms'])} ms)")
    for col in ("layer", "mean ms", "share", "utilization", "capacity"):
        layers.add_column(col)
    for row in b["layers"]:
        util = row["utilization"]
        layers.add_row(row["layer"], _f(row["mean_ms"], 2),
                       "-" if row["share"] is None else f"{100 * row['share']:.0f}%",
                       "-" if util is None else f"{100 * util:.0f}%", row["capacity"])  # fmt: skip
    console.print(layers)
    console.print(f"constrained layer: {b['constrained_layer']} -- {b['why']}")
    console.print(f"source: {b['source']}")


def _f(v: float | None, digits: int = 1) -> str:
    return "-" if v is None else f"{v:.{digits}f}"
