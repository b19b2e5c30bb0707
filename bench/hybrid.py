"""Hybrid retrieval benchmark: dense vs lexical (FTS5 bm25) vs hybrid (RRF, blend), with each
document scoring, on labeled known-item sets built from the shipped corpora, through a real
server and the real bundled model.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/hybrid.py                 # all sets
    .venv/bin/python bench/hybrid.py --gcide 2000 --max-queries 150   # quicker

Label sets (written to bench/out/labels-*.jsonl, usable with `embedstack eval`):
- pydoc-titles: section title -> its section (tests/data/pydoc_sections.jsonl, 213 sections of
  the Python tutorial and library docs; chunked at 128 tokens so sections have several chunks)
- pydoc-identifiers: a dotted name or call (e.g. `str.split`, `asyncio.gather()`) that occurs in
  exactly one section -> that section (exact identifiers: a lexical known-item task)
- gcide-headwords: a headword -> its entries, over a block of --gcide distinct entries in
  dictionary order from --gcide-from on (neighbours share stems: abandon, abandonment...;
  needs `apt-get install dict-gcide`)
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


def ingest(client: Any, name: str, docs: list[dict[str, Any]], chunking: dict[str, Any]) -> None:
    """Create and fill a collection, unless a kept data dir already holds it in full."""
    r = client.get(f"/v1/collections/{name}")
    kept = r.status_code == 200 and r.json()["documents"] == len(docs)
    if kept and r.json()["documents_pending"] == 0:
        log(f"{name}: kept from an earlier run")
        return
    if r.status_code == 200:
        client.delete(f"/v1/collections/{name}")
    post(client, "/v1/collections", {"name": name, "chunking": chunking})
    jobs = [
        post(client, f"/v1/collections/{name}/documents", {"documents": docs[i : i + 500]})
        for i in range(0, len(docs), 500)
    ]
    wait_jobs(client, [j["job_id"] for j in jobs], timeout=3600)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--gcide", type=int, default=3000, help="GCIDE entries to index (0: skip)")
    ap.add_argument("--gcide-from", default="mar", help="headword the GCIDE block starts at")
    ap.add_argument("--max-queries", type=int, default=250, help="queries per label set")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "out")
    ap.add_argument(
        "--data", type=Path, default=None, help="keep the server's data here (reused next time)"
    )
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    load_before = load_note()
    docs = pydoc_docs()
    sets: dict[str, tuple[str, list[Label]]] = {
        "pydoc-titles": ("pydoc", pydoc_title_labels(docs, args.max_queries)),
        "pydoc-identifiers": ("pydoc", pydoc_identifier_labels(docs, args.max_queries)),
    }
    gdocs = gcide_docs(args.gcide, args.gcide_from) if args.gcide else []
    if gdocs:
        sets["gcide-headwords"] = ("gcide", gcide_labels(gdocs, args.max_queries))
    for name, (_, labels) in sets.items():
        write_labels(args.out / f"labels-{name}.jsonl", labels)
        log(f"{name}: {len(labels)} queries")
    settings = default_settings()
    for fusion in ("rrf", "blend"):  # the weight of dense, either side of the even 0.5
        settings += [Setting("hybrid", fusion, a, "max") for a in (0.3, 0.7)]
    report: dict[str, Any] = {"load_before": load_before, "sets": {}}
    with tempfile.TemporaryDirectory(prefix="hybrid-bench-") as tmp:
        env = server_env(EMBEDSTACK_MODEL_BACKENDS=PINNED)
        workdir = args.data or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        with Server(workdir, env) as server:
            client = server.client()
            started = time.perf_counter()
            ingest(client, "pydoc", docs, {"mode": "sentences", "size": 128, "overlap": 16})
            if gdocs:
                ingest(client, "gcide", gdocs, {"mode": "tokens"})
            log(f"ingested in {time.perf_counter() - started:.0f}s")
            for name, (collection, labels) in sets.items():
                log(f"evaluating {name}")
                results = evaluate(http_searcher(client, collection), labels, settings, args.k)
                print(f"\n## {name} ({len(labels)} queries, collection {collection})")
                print(format_table(results, args.k))
                report["sets"][name] = [r.row() for r in results]
                summarize(name, results)
    report["load_after"] = load_note()
    print(f"\nload before: {load_before}\nload after:  {report['load_after']}")
    (args.out / "hybrid.json").write_text(json.dumps(report, indent=1))


def summarize(name: str, results: list[Result]) -> None:
    """The server default (hybrid.DEFAULT_*) against dense / max (the old behaviour)."""
    from embedstack.registry.hybrid import DEFAULT_DOC_SCORING, DEFAULT_FUSION

    def find(mode: str, fusion: str | None, scoring: str) -> Result | None:
        return next(
            (
                r
                for r in results
                if (r.setting.mode, r.setting.fusion, r.setting.alpha) == (mode, fusion, None)
                and r.setting.doc_scoring == scoring
            ),
            None,
        )

    dense = find("dense", None, "max")
    default = find("hybrid", DEFAULT_FUSION, DEFAULT_DOC_SCORING)
    if dense and default:
        gain = (default.recall - dense.recall) * 100
        ratio = default.percentile(0.5) / max(1e-9, dense.percentile(0.5))
        print(
            f"{name}: default ({default.setting.name}) vs dense / max: {gain:+.1f} points "
            f"recall@10, MRR {default.mrr:.3f} vs {dense.mrr:.3f}, p50 x{ratio:.2f}"
        )


if __name__ == "__main__":
    main()
