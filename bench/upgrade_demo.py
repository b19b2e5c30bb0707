"""Model upgrade on real data: ingest with paraphrase-MiniLM-L3-v2, upgrade to all-MiniLM-L6-v2
through the shadow re-index with a labeled gate built from the corpus itself, print recall@10.

Labeled set: GCIDE headword -> its dictionary entry (default), or python-doc section title ->
its section (--corpus pydoc). Both are real text from Debian's packages; nothing is downloaded.

    python bench/upgrade_demo.py [--corpus gcide|pydoc] [--n 2000] [--queries 300]
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

from common import (
    PYDOC_JSONL,
    Server,
    batched,
    load_note,
    post,
    preflight,
    pydoc_docs,
    say,
    server_env,
    unique_gcide,
    wait_jobs,
)

OLD, NEW = "paraphrase-MiniLM-L3-v2", "all-MiniLM-L6-v2"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--corpus", choices=("gcide", "pydoc"), default="gcide")
    ap.add_argument("--n", type=int, default=2000, help="documents to ingest")
    ap.add_argument("--queries", type=int, default=300, help="labeled queries for the gate")
    ap.add_argument("--k", type=int, default=10)
    args = ap.parse_args()
    preflight(corpora=("gcide",) if args.corpus == "gcide" else (), files=(PYDOC_JSONL,))
    pairs = unique_gcide(args.n) if args.corpus == "gcide" else pydoc_docs(args.n)
    docs = [
        {"id": f"d{i}", "text": text, "metadata": {"title": title}}
        for i, (title, text) in enumerate(pairs)
    ]
    rng = random.Random(0)
    labeled = [{"query": d["metadata"]["title"], "document_id": d["id"]}  # type: ignore[index]
               for d in rng.sample(docs, min(args.queries, len(docs)))]  # fmt: skip
    say(f"{args.corpus}: {len(docs)} documents, {len(labeled)} labeled queries; {load_note()}")
    with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp), server_env()) as server:
        c = server.client(timeout=900)
        post(
            c,
            "/v1/collections",
            {"name": "demo", "model": OLD, "chunking": {"size": 128, "overlap": 16}},
        )
        started = time.perf_counter()
        jobs = [post(c, "/v1/collections/demo/documents", {"documents": list(part)})["job_id"]
                for part in batched(docs, 500)]  # fmt: skip
        wait_jobs(c, jobs)
        say(f"ingested with {OLD} in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        status = post(
            c,
            "/v1/collections/demo/upgrade",
            {"model": NEW, "eval": labeled, "gate": {"k": args.k}},
        )
        while status["state"] == "backfilling":
            time.sleep(1)
            status = c.get("/v1/collections/demo/upgrade").json()
            done, total, rate = status["done"], status["total"], status["rate_docs_per_s"]
            say(f"  shadow re-index {done}/{total} docs, {rate}/s")
        say(f"back-fill {status['state']} in {time.perf_counter() - started:.1f} s")
        r = c.post("/v1/collections/demo/upgrade/cutover", json={})
        report = c.get("/v1/collections/demo/upgrade").json()["report"]
        old, new = report["old"], report["new"]
        say(f"recall@{args.k}: {OLD} {old['recall']:.4f} (MRR {old['mrr']:.4f})")
        say(f"          -> {NEW} {new['recall']:.4f} (MRR {new['mrr']:.4f})")
        serving = c.get("/v1/collections/demo").json()["model"]
        say(f"cutover: HTTP {r.status_code}; serving {serving}")
        if r.status_code != 200:
            sys.exit(1)


if __name__ == "__main__":
    main()
