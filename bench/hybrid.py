"""Hybrid retrieval benchmark: dense vs lexical (FTS5 bm25) vs hybrid (RRF, blend), with each
document scoring, on labeled known-item sets built from the shipped corpora, through a real
server and the real bundled model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/hybrid.py                 # all sets
    .venv/bin/python bench/hybrid.py --gcide 3000 --max-queries 60    # quicker

Label sets (written to bench/out/labels-*.jsonl, usable with `embedstack eval`):
- pydoc-titles: section title -> its section (tests/data/pydoc_sections.jsonl, 213 sections of
  the Python tutorial and library docs; chunked at 128 tokens so sections have several chunks);
  the collection indexes the `title` metadata as the lexical title column (the default
  lexical_fields); pydoc-titles-no-title-field asks the same of a copy without it
- pydoc-identifiers: a dotted name or call (e.g. `str.split`, `asyncio.gather()`) that occurs in
  exactly one section -> that section (exact identifiers: a lexical known-item task)
- gcide-headwords: a headword -> its entries, over a block of --gcide distinct entries in
  dictionary order from --gcide-from on (neighbours share stems: abandon, abandonment...;
  needs `apt-get install dict-gcide`); the headword is not indexed as a title
Each set's sample is split in halves: the dev half chooses the collection's hybrid default
(fusion x alpha, tuning_grid), the test half reports every setting and that choice.
Every setting answers every query (interleaved); latency is the client's wall time per query
over HTTP on loopback. Writes bench/out/hybrid.json.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import PYDOC_JSONL, Server, load_note, post, server_env, wait_jobs  # noqa: E402
from embedstack.registry.evaluate import (  # noqa: E402
    Label,
    Result,
    Setting,
    default_settings,
    evaluate,
    format_table,
    http_searcher,
)

PINNED = '{"all-MiniLM-L6-v2": "onnx-fp32"}'
IDENT = re.compile(
    r"\b[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+(?:\(\))?|\b[a-z_]\w*\(\)"
)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spread(items: list[Any], n: int) -> list[Any]:
    if len(items) <= n:
        return list(items)
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]


def pydoc_docs() -> list[dict[str, Any]]:
    return [json.loads(line) for line in PYDOC_JSONL.read_text().splitlines() if line.strip()]


def pydoc_title_labels(docs: list[dict[str, Any]], n: int) -> list[Label]:
    by_title: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        title = str(d["metadata"]["title"]).strip(" :.")
        if title:
            by_title[title].add(str(d["id"]))
    labels = [Label(t, frozenset(ids)) for t, ids in by_title.items()]
    return spread(labels, n)


def pydoc_identifier_labels(docs: list[dict[str, Any]], n: int) -> list[Label]:
    where: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        for ident in set(IDENT.findall(str(d["text"]))):
            if len(ident) >= 6 and not ident[0].isdigit():
                where[ident].add(str(d["id"]))
    unique = sorted((i, next(iter(ids))) for i, ids in where.items() if len(ids) == 1)
    return spread([Label(i, frozenset([doc])) for i, doc in unique], n)


def gcide_docs(n: int, start: str) -> list[dict[str, Any]]:
    """`n` distinct GCIDE entries in dictionary order from headword `start` on: a contiguous
    block, so neighbours share stems and senses (abandon, abandoned, abandonment...)."""
    from corpora import gcide_entries

    seen: set[str] = set()
    entries: list[tuple[str, str]] = []
    for word, text in gcide_entries():
        if word.lower() < start or text in seen or len(text.split()) < 5:
            continue
        seen.add(text)
        entries.append((word, text))
        if len(entries) >= n:
            break
    return [
        {"id": f"g{i}", "text": text, "metadata": {"headword": word}}
        for i, (word, text) in enumerate(entries)
    ]


def gcide_labels(docs: list[dict[str, Any]], n: int) -> list[Label]:
    by_word: dict[str, set[str]] = defaultdict(set)
    for d in docs:
        by_word[str(d["metadata"]["headword"]).lower()].add(str(d["id"]))
    words = sorted(w for w in by_word if len(w) >= 3 and w.isalpha())
    return [Label(w, frozenset(by_word[w])) for w in spread(words, n)]


def write_labels(path: Path, labels: list[Label]) -> None:
    with path.open("w") as f:
        for label in labels:
            f.write(json.dumps({"query": label.query, "relevant": sorted(label.relevant)}) + "\n")


def ingest(client: Any, name: str, docs: list[dict[str, Any]], config: dict[str, Any]) -> None:
    """Create and fill a collection, unless a kept data dir already holds it in full."""
    r = client.get(f"/v1/collections/{name}")
    kept = r.status_code == 200 and r.json()["documents"] == len(docs)
    if kept and r.json()["documents_pending"] == 0:
        log(f"{name}: kept from an earlier run")
        return
    if r.status_code == 200:
        client.delete(f"/v1/collections/{name}")
    post(client, "/v1/collections", {"name": name, **config})
    jobs = [
        post(client, f"/v1/collections/{name}/documents", {"documents": docs[i : i + 500]})
        for i in range(0, len(docs), 500)
    ]
    wait_jobs(client, [j["job_id"] for j in jobs], timeout=3600)


NO_TITLE_SETTINGS = [
    Setting("dense", None, None, "max"),
    Setting("lexical", None, None, "max"),
    Setting("hybrid", "rrf", None, "first_prior"),
    Setting("hybrid", "blend", None, "first_prior"),
]


def split(labels: list[Label]) -> tuple[list[Label], list[Label]]:
    """Dev (tuning) and test (reporting) halves: alternate labels of the spread sample."""
    return labels[0::2], labels[1::2]


def tuning_grid() -> list[Setting]:
    """What the dev half chooses among for a collection's default: fusion x dense weight."""
    from embedstack.registry.hybrid import DEFAULT_DOC_SCORING

    return [
        Setting("hybrid", fusion, alpha, DEFAULT_DOC_SCORING)
        for fusion in ("rrf", "blend")
        for alpha in (0.3, 0.5, 0.7)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gcide", type=int, default=12000, help="GCIDE entries to index (0: skip)")
    ap.add_argument("--gcide-from", default="a", help="headword the GCIDE block starts at")
    ap.add_argument("--max-queries", type=int, default=150, help="queries per split per set")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument(
        "--data", type=Path, default=None, help="keep the server's data here (reused next time)"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = load_note()
    docs = pydoc_docs()
    n = 2 * args.max_queries
    titles = pydoc_title_labels(docs, n)
    sets: dict[str, tuple[str, list[Label]]] = {
        "pydoc-titles": ("pydoc", titles),
        # the same queries without the title column: what indexing the title adds
        "pydoc-titles-no-title-field": ("pydoc_notitle", titles),
        "pydoc-identifiers": ("pydoc", pydoc_identifier_labels(docs, n)),
    }
    gdocs = gcide_docs(args.gcide, args.gcide_from) if args.gcide else []
    if gdocs:
        sets["gcide-headwords"] = ("gcide", gcide_labels(gdocs, n))
    for name, (_, labels) in sets.items():
        dev, test = split(labels)
        write_labels(args.out / f"labels-{name}-dev.jsonl", dev)
        write_labels(args.out / f"labels-{name}-test.jsonl", test)
        log(f"{name}: {len(dev)} dev + {len(test)} test queries")
    settings = default_settings()
    report: dict[str, Any] = {"load_before": load_before, "sets": {}, "chosen": {}}
    with tempfile.TemporaryDirectory(prefix="hybrid-bench-") as tmp:
        env = server_env(EMBEDSTACK_MODEL_BACKENDS=PINNED)
        workdir = args.data or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with Server(workdir, env) as server:
            client = server.client()
            started = time.perf_counter()
            chunking = {"mode": "sentences", "size": 128, "overlap": 16}
            ingest(client, "pydoc", docs, {"chunking": chunking})
            ingest(client, "pydoc_notitle", docs, {"chunking": chunking, "lexical_fields": []})
            if gdocs:
                ingest(client, "gcide", gdocs, {"chunking": {"mode": "tokens"}})
            log(f"ingested in {time.perf_counter() - started:.0f}s")
            for name, (collection, labels) in sets.items():
                dev, test = split(labels)
                searcher = http_searcher(client, collection)
                if collection == "pydoc_notitle":  # the title column's share: a few settings
                    results = evaluate(searcher, test, NO_TITLE_SETTINGS, args.k)
                    print(f"\n## {name}: test half ({len(test)} queries), {collection}")
                    print(format_table(results, args.k))
                    report["sets"][name] = [r.row() for r in results]
                    continue
                log(f"{name}: choosing the collection default on the dev half")
                tuned = evaluate(searcher, dev, tuning_grid(), args.k)
                best = max(tuned, key=lambda r: (round(r.recall, 4), r.mrr))
                print(f"\n## {name}: dev half ({len(dev)} queries), collection {collection}")
                print(format_table(tuned, args.k))
                chosen = best.setting
                report["chosen"][name] = chosen.body()
                log(f"{name}: chose {chosen.name}; evaluating the test half")
                on_test = settings + ([] if chosen in settings else [chosen])
                results = evaluate(searcher, test, on_test, args.k)
                print(f"\n## {name}: test half ({len(test)} queries), collection {collection}")
                print(format_table(results, args.k))
                report["sets"][name] = [r.row() for r in results]
                summarize(name, results, chosen)
    report["load_after"] = load_note()
    print(f"\nload before: {load_before}\nload after:  {report['load_after']}")
    (args.out / "hybrid.json").write_text(json.dumps(report, indent=1))


def summarize(name: str, results: list[Result], chosen: Setting) -> None:
    """The server default (hybrid.DEFAULT_*) and the dev-chosen setting, on the test half,
    against dense (each with its best document scoring: max, the old behaviour, or the default)."""
    from embedstack.registry.hybrid import DEFAULT_DOC_SCORING, DEFAULT_FUSION

    def find(setting: Setting) -> Result | None:
        return next((r for r in results if r.setting == setting), None)

    dense = find(Setting("dense", None, None, "max"))
    for label, setting in (
        ("default", Setting("hybrid", DEFAULT_FUSION, None, DEFAULT_DOC_SCORING)),
        ("dev-chosen", chosen),
    ):
        found = find(setting)
        if dense and found:
            gain = (found.recall - dense.recall) * 100
            ratio = found.percentile(0.5) / max(1e-9, dense.percentile(0.5))
            print(
                f"{name}: {label} ({setting.name}) vs dense / max: {gain:+.1f} points "
                f"recall@10 ({found.recall:.3f} vs {dense.recall:.3f}), MRR {found.mrr:.3f} vs "
                f"{dense.mrr:.3f}, p50 x{ratio:.2f}"
            )


if __name__ == "__main__":
    main()
