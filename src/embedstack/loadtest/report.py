"""A load run as a table (rich) and a PNG (matplotlib, from the `bench` extra: without it the PNG
is skipped with a message saying how to get it)."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from embedstack.loadtest.run import PERCENTILES, LoadResult

CURVE = (0.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99)
PNG_MISSING = "PNG skipped: matplotlib is not installed (pip install 'embedstack[bench]')"


def _ms(row: dict[str, float], key: str) -> str:
    v = row.get(key)
    return "-" if v is None else f"{v:.1f}"


def table(result: LoadResult) -> Table:
    d = result.to_dict()
    t = Table(
        title=f"{d['mix']} at {d['offered_qps']:.1f} req/s for {d['duration_s']:g} s -> "
        f"{d['url']} ({d['collection']})"
    )
    t.add_column("operation")
    t.add_column("ok", justify="right")
    for name, _ in PERCENTILES:
        t.add_column(f"{name} ms", justify="right")
    t.add_column("max ms", justify="right")
    rows: list[tuple[str, dict[str, float]]] = list(d["by_operation"].items())
    if len(rows) > 1:
        rows.append(("all", d["latency"]))
    for op, row in rows:
        cells = [_ms(row, f"{name}_ms") for name, _ in PERCENTILES]
        t.add_row(op, str(int(row["count"])), *cells, _ms(row, "max_ms"))
    t.caption = (
        f"offered {d['offered_qps']:.1f}/s, achieved {d['achieved_qps']:.1f}/s "
        f"({100 * d['achieved_over_offered']:.0f}%); scheduled {d['scheduled']}, ok {d['ok']}, "
        f"429 {d['rejected_429']}, errors {d['errors']}"
        + (f" {d['error_kinds']}" if d["errors"] else "")
        + (f", not sent (generator bound) {d['not_sent']}" if d["not_sent"] else "")
        + f"\ngenerator: send lag p99 {_ms(d['send_lag'], 'p99_ms')} ms, CPU "
        f"{d['generator_cpu_pct']:.0f}% of one core; load average "
        + " ".join(f"{x:.2f}" for x in d["loadavg"])
    )
    return t


def write_png(result: LoadResult, path: Path) -> str:
    """Latency by percentile (HDR style) and latency over the run; returns what was done."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return PNG_MISSING
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for op, h in sorted(result.latency.items()):
        if h.get_total_count() == 0:
            continue
        xs = [1.0 / (1.0 - p / 100.0) for p in CURVE]
        ys = [h.get_value_at_percentile(p) / 1000.0 for p in CURVE]
        left.plot(xs, ys, marker=".", label=op)
    left.set_xscale("log")
    ticks = [1, 2, 10, 100, 1000, 10000]
    left.set_xticks(ticks, ["0%", "50%", "90%", "99%", "99.9%", "99.99%"])
    left.set_xlabel("percentile")
    left.set_ylabel("latency ms (from scheduled send)")
    left.legend()
    left.grid(alpha=0.3)
    by_op: dict[str, tuple[list[float], list[float]]] = {}
    for t, ms, op in result.timeline:
        xs_, ys_ = by_op.setdefault(op, ([], []))
        xs_.append(t)
        ys_.append(ms)
    for op, (xs_, ys_) in sorted(by_op.items()):
        right.scatter(xs_, ys_, s=3, label=op, alpha=0.5)
    right.set_xlabel("scheduled send time s")
    right.set_ylabel("latency ms")
    right.grid(alpha=0.3)
    d = result.to_dict()
    fig.suptitle(
        f"{d['mix']} offered {d['offered_qps']:.1f}/s, achieved {d['achieved_qps']:.1f}/s; "
        f"429 {d['rejected_429']}, errors {d['errors']}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"PNG written to {path}"
