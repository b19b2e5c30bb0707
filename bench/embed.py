"""Embedding throughput per backend vs plain SentenceTransformer.encode, in the same run.

    python bench/embed.py [--texts 1000] [--repeats 3] [--backends onnx-fp32,torch-bf16]
                          [--e2e] [--cache-dir DIR]

Corpora: GCIDE dictionary entries (bench/corpora.py, needs `apt-get install dict-gcide`) and the
paragraphs of tests/data/pydoc_sections.jsonl. For each corpus, plain `SentenceTransformer.encode`
(batch 32, the library default) and every backend of all-MiniLM-L6-v2 (calls of 64 texts, as the
batcher sends them) embed the same texts, interleaved, `--repeats` times; the table shows the
median texts/s, the ratio to plain encode and the cosine to plain encode on that corpus, then the
accuracy gate's verdict (shipped real-text sample; cached per machine).
With --e2e, a real server (the default model: auto-selected gated backend) is measured through
POST /v1/embeddings (4 concurrent clients x 64 texts) and through ingest (POST documents until
the jobs are done), beside the same server on the plain sentence-transformers backend.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import PYDOC_JSONL, Server, load_note, post, say, server_env, table, wait_jobs
from embedstack.inference.bundled import L6_NAME, l6_dir
from embedstack.inference.models import Catalog

CALL = 64  # texts per embed_batch call, the batcher's default max_batch_size


def pydoc_paragraphs(n: int) -> list[str]:
    out: list[str] = []
    for line in PYDOC_JSONL.read_bytes().splitlines():
        for para in re.split(r"\n\s*\n", orjson.loads(line)["text"]):
            text = " ".join(para.split())
            if len(text.split()) >= 5:
                out.append(text)
    step = max(1, len(out) // n)
    return out[::step][:n]


def gcide_texts(n: int) -> list[str]:
    from common import unique_gcide

    entries = unique_gcide(n * 10)
    return [text for _, text in entries[:: max(1, len(entries) // n)][:n]]


def timed(fn: Callable[[], np.ndarray]) -> tuple[np.ndarray, float]:
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def in_process(
    catalog: Catalog, backends: Sequence[str], corpora: dict[str, list[str]], repeats: int
) -> None:
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(l6_dir()), device="cpu")
    st.max_seq_length = 256
    embedders = {b: catalog.variant(L6_NAME, b).build() for b in backends}
    for name, texts in corpora.items():
        runs: dict[str, Callable[[], np.ndarray]] = {
            "plain encode": lambda t=texts: st.encode(t, batch_size=32, normalize_embeddings=True)
        }
        for b, e in embedders.items():
            runs[b] = lambda e=e, t=texts: np.concatenate(
                [e.embed_batch(t[i : i + CALL]) for i in range(0, len(t), CALL)]
            )
        st.encode(texts[:CALL], batch_size=32)  # warm up every engine
        for e in embedders.values():
            e.embed_batch(texts[:CALL])
        seconds: dict[str, list[float]] = {k: [] for k in runs}
        vectors: dict[str, np.ndarray] = {}
        for _ in range(repeats):
            for k, fn in runs.items():
                vectors[k], dt = timed(fn)
                seconds[k].append(dt)
        base = len(texts) / statistics.median(seconds["plain encode"])
        rows = []
        for k in runs:
            speed = len(texts) / statistics.median(seconds[k])
            cos = np.sum(vectors[k] * vectors["plain encode"], axis=1)
            rows.append(
                [k, f"{speed:.0f}", f"{speed / base:.2f}x", f"{cos.mean():.6f}", f"{cos.min():.6f}"]
            )
        table(
            f"{name}: {len(texts)} texts, median of {repeats}",
            ["backend", "texts/s", "vs plain encode", "cos mean", "cos min"],
            rows,
        )


def gate_table(catalog: Catalog, backends: Sequence[str]) -> None:
    rows = []
    for b in [catalog.reference(L6_NAME).backend, *backends]:
        r = catalog.check(L6_NAME, b)
        rows.append(
            [
                b,
                "passed" if r.passed else "REFUSED",
                f"{r.mean_cosine:.6f}",
                f"{r.min_cosine:.6f}",
                f"{100 * r.recall_reference:.2f}",
                f"{100 * r.recall_candidate:.2f}",
                f"{r.texts_per_s:.0f}",
            ]
        )
    table(
        f"accuracy gate vs fp32 ({catalog.sample().texts.__len__()} real texts)",
        ["backend", "gate", "cos mean", "cos min", "recall@10 fp32", "recall@10", "texts/s"],
        rows,
    )
    say(f"auto-selected backend for {L6_NAME}: {catalog.choose(L6_NAME)}")


def e2e(texts: list[str]) -> None:
    # the server decides from the gate reports and speed race cached in ~/.cache/embedstack:
    # make them now, so that it serves the chosen backend from its first request
    say(f"auto choice for the server: {Catalog(background=False).choose(L6_NAME)}")
    rows = []
    env = server_env()  # the server keeps its gate reports in ~/.cache/embedstack
    for model in (f"{L6_NAME}@sentence-transformers", L6_NAME):
        with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp), env) as server:
            client = server.client(timeout=600)
            post(client, "/v1/embeddings", {"model": model, "input": texts[:8]})  # load + select
            batches = [texts[i : i + CALL] for i in range(0, len(texts), CALL)]

            def send(batch: list[str], c=client, m=model) -> None:
                post(c, "/v1/embeddings", {"model": m, "input": batch})

            started = time.perf_counter()
            with ThreadPoolExecutor(4) as pool:
                list(pool.map(send, batches))
            http_speed = len(texts) / (time.perf_counter() - started)
            post(client, "/v1/collections", {"name": "bench", "model": model})
            docs = [{"id": str(i), "text": t} for i, t in enumerate(texts)]
            started = time.perf_counter()
            jobs = [
                post(client, "/v1/collections/bench/documents", {"documents": docs[i : i + 256]})[
                    "job_id"
                ]
                for i in range(0, len(docs), 256)
            ]
            wait_jobs(client, jobs, timeout=3600)
            ingest_speed = len(texts) / (time.perf_counter() - started)
            chunks = client.get("/v1/collections/bench").json().get("chunks", len(texts))
            rows.append([model, f"{http_speed:.0f}", f"{ingest_speed:.0f}", str(chunks)])
    plain = plain_encode_speed(texts)
    base_http, base_ingest = float(rows[0][1]), float(rows[0][2])
    for row in rows:
        http, ingest = float(row[1]), float(row[2])
        row += [
            f"{http / plain:.2f}x",
            f"{ingest / plain:.2f}x",
            f"{http / base_http:.2f}x",
            f"{ingest / base_ingest:.2f}x",
        ]
    cols = [
        "model",
        "POST /v1/embeddings texts/s",
        "ingest docs/s",
        "chunks",
        "http vs plain encode",
        "ingest vs plain encode",
        "http vs st server",
        "ingest vs st server",
    ]
    table(
        f"end to end, {len(texts)} texts; plain encode in-process: {plain:.0f} texts/s", cols, rows
    )


def plain_encode_speed(texts: list[str], repeats: int = 2) -> float:
    """Plain SentenceTransformer.encode (batch 32) of the same texts, in this process."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(l6_dir()), device="cpu")
    st.max_seq_length = 256
    st.encode(texts[:CALL], batch_size=32)
    best = min(timed(lambda: st.encode(texts, batch_size=32))[1] for _ in range(repeats))
    return len(texts) / best


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--texts", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument(
        "--backends", default=None, help="comma-separated; default: all but the reference"
    )
    ap.add_argument("--e2e", action="store_true")
    ap.add_argument("--e2e-only", action="store_true")
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args()
    say(load_note())
    catalog = Catalog(args.cache_dir, background=False)
    all_backends = [v.backend for v in catalog.variants(L6_NAME) if not v.reference]
    backends = args.backends.split(",") if args.backends else all_backends
    corpora = {"pydoc paragraphs": pydoc_paragraphs(args.texts)}
    try:
        corpora["GCIDE entries"] = gcide_texts(args.texts)
    except OSError as exc:
        say(f"GCIDE skipped ({exc}); apt-get install dict-gcide")
    if not args.e2e_only:
        in_process(catalog, backends, corpora, args.repeats)
        gate_table(catalog, backends)
    if args.e2e or args.e2e_only:
        e2e(corpora.get("GCIDE entries", corpora["pydoc paragraphs"]))
    say(load_note())


if __name__ == "__main__":
    main()
