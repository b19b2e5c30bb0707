"""Table, target verdicts and the recall-vs-QPS plot for bench/index.py."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from index_runs import Row

FLOOR = 0.95
PEERS = ("chromadb", "lancedb")


def _best(rows: list[Row], floor: float = FLOOR) -> Row | None:
    ok = [r for r in rows if r.recall >= floor]
    return max(ok, key=lambda r: r.qps1) if ok else None


def table_rows(rows: list[Row]) -> list[Row]:
    """Ours and raw at default settings; for each peer its best row reaching the floor (or its
    best recall); hnswlib at the same parameters as our hnsw (ef_search=64)."""
    out = [r for r in rows if r.system in ("embedstack", "faiss (raw)") and not r.sweep]
    # ours first, then plain faiss on our structure, then the independent raw build
    out += [r for r in rows if r.system == "hnswlib (raw)" and r.config.endswith("ef=64")]
    for peer in PEERS:
        mine = [r for r in rows if r.system == peer]
        if mine:
            out.append(_best(mine) or max(mine, key=lambda r: r.recall))
    return out


def _fmt(x: float | None, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table_text(rows: list[Row], meta: dict[str, Any]) -> str:
    lines = [
        f"\n{meta['n_vectors']} GCIDE vectors x {meta['dim']} (all-MiniLM-L6-v2), "
        f"{meta['queries']} held-out queries, k=10, {meta['cpus']} cpus shared, "
        f"loadavg {meta['loadavg_before']} -> {meta['loadavg_after']}"
    ]
    head = f"{'system':<14} {'config':<44} {'recall@10':>9} {'QPS 1t':>7} {'QPS 2t':>7} "
    head += f"{'cpu us/q':>8} {'B/vector':>8} {'build s':>7}"
    lines += [head, "-" * len(head)]
    for r in table_rows(rows):
        lines.append(
            f"{r.system:<14} {r.config[:44]:<44} {r.recall:>9.3f} {r.qps1:>7.0f} "
            f"{_fmt(r.qps2, '7.0f'):>7} {_fmt(r.cpu_us1, '8.0f'):>8} "
            f"{_fmt(r.bytes_per_vector, '8.0f'):>8} {_fmt(r.build_s, '7.1f'):>7}"
        )
    return "\n".join(lines)


def verdicts(rows: list[Row]) -> list[str]:
    """Our search path vs raw faiss on the same structure and knobs (1 thread by CPU time per
    query, which the shared box's load does not skew; 2 threads by wall-clock QPS), and our best
    vs each peer's best at recall@10 >= FLOOR."""
    lines = ["", "targets:"]
    raws = {r.extra.get("type"): r for r in rows if r.system == "faiss (raw)"
            and not r.extra.get("same_structure")}  # fmt: skip
    sames = {r.extra.get("type"): r for r in rows if r.extra.get("same_structure")}
    for mine in [r for r in rows if r.system == "embedstack" and not r.sweep]:
        kind = mine.extra.get("type")
        ref = sames.get(kind) or raws.get(kind)
        if ref is None or not mine.cpu_us1 or not ref.cpu_us1:
            continue
        r1 = ref.cpu_us1 / mine.cpu_us1
        r2 = (mine.qps2 or 0) / (ref.qps2 or 1)
        ok = r1 >= 0.95 and abs(mine.recall - ref.recall) <= 0.01
        what = "plain faiss on the same structure" if kind in sames else "raw faiss"
        line = (
            f"  {'PASS' if ok else 'MISS'} {mine.config}: {r1:.2f}x {what} at 1 thread "
            f"({mine.cpu_us1:.0f} vs {ref.cpu_us1:.0f} cpu us/query), {r2:.2f}x wall QPS at 2 "
            f"threads; recall {mine.recall:.3f} vs {ref.recall:.3f}"
        )
        raw = raws.get(kind)
        if kind in sames and raw is not None and raw.cpu_us1:
            line += f"; vs an independent raw build: {raw.cpu_us1 / mine.cpu_us1:.2f}x"
        lines.append(line)
    ours = [r for r in rows if r.system == "embedstack" and r.recall >= FLOOR]
    for peer in PEERS:
        theirs = [r for r in rows if r.system == peer and r.recall >= FLOOR]
        if not ours or not theirs:
            lines.append(f"  ---- vs {peer}: no run reached recall@10 >= {FLOOR}")
            continue
        for label, key in (("1 thread", "qps1"), ("2 threads", "qps2")):
            mine = max((r for r in ours if getattr(r, key)), key=lambda r: getattr(r, key))
            best = max((r for r in theirs if getattr(r, key)), key=lambda r: getattr(r, key))
            a, b = getattr(mine, key), getattr(best, key)
            lines.append(
                f"  {'PASS' if a > b else 'MISS'} vs {peer} at recall >= {FLOOR}, {label}: ours "
                f"{mine.config} {a:.0f} QPS (recall {mine.recall:.3f}) vs {best.config} "
                f"{b:.0f} QPS (recall {best.recall:.3f}): {a / b:.1f}x"
            )
    return lines


def plot(rows: list[Row], meta: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(10, 6.5))
    groups: dict[str, list[Row]] = {}
    for r in rows:
        name = f"ours: {r.config.split(' ')[0]}" if r.system == "embedstack" else r.system
        groups.setdefault(name, []).append(r)
    for name, items in sorted(groups.items()):
        items = sorted(items, key=lambda r: r.recall)
        xs, ys = [r.recall for r in items], [r.qps1 for r in items]
        if name.startswith("ours"):
            ax.plot(xs, ys, "-o", label=name)
        elif name == "faiss (raw)":  # one point per index type, same params as ours
            ax.plot(xs, ys, "kx", ms=8, label="raw faiss, same params")
        elif name == "lancedb":  # different index kinds: points, not a curve
            ax.plot(xs, ys, "s", mfc="none", label=name)
        else:
            ax.plot(xs, ys, ":s", mfc="none", label=name)
    ax.axvline(FLOOR, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("recall@10 vs exact")
    ax.set_ylabel("queries per second, 1 thread, batch 1 (log)")
    ax.set_yscale("log")
    ax.set_title(
        f"{meta['n_vectors']} GCIDE all-MiniLM-L6-v2 vectors, {meta['queries']} held-out "
        f"queries; loadavg {meta['loadavg_before'][0]}"
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
