"""Embedding throughput per backend vs plain SentenceTransformer.encode, in the same run.

    python bench/embed.py [--texts 1000] [--repeats 3] [--backends onnx-fp32,torch-bf16]
                          [--e2e] [--no-infinity] [--cache-dir DIR]

Corpora: GCIDE dictionary entries (bench/corpora.py, needs `apt-get install dict-gcide`) and the
paragraphs of tests/data/pydoc_sections.jsonl. For each corpus, plain `SentenceTransformer.encode`
(batch 32, the library default) and every backend of all-MiniLM-L6-v2 (calls of 64 texts, as the
batcher sends them) embed the same texts, interleaved, `--repeats` times; the table shows the
median texts/s, the ratio to plain encode and the cosine to plain encode on that corpus, then the
accuracy gate's verdict (shipped real-text sample; cached per machine).
With --e2e, a real server (the default model: auto-selected gated backend) is measured through
POST /v1/embeddings (4 concurrent clients x 64 texts) and through ingest (POST documents until
the jobs are done), beside the same server on the plain sentence-transformers backend, and
infinity-emb 0.0.78 (torch engine, CPU, fp32, batch 64) serving the same model folder, measured
through its POST /embeddings with the same load (bench/peers/infinity_peer.py; its own venv under
~/.cache/embedstack/peers, created on first use; --no-infinity skips it).
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
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
from rich.markup import escape

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import (
    PYDOC_JSONL,
    Server,
    batched,
    load_note,
    post,
    preflight,
    say,
    server_env,
    table,
    wait_jobs,
)
from embedstack.inference.models.bundled import L6
from embedstack.inference.models.catalog import Catalog
from ingest import CHUNKING, chunk_rounds
from peers.infinity_peer import InfinityServer, InfinityUnavailable

CALL = 64  # texts per embed_batch call, the batcher's default max_batch_size
CLIENTS = 4  # concurrent HTTP clients in the end-to-end runs
INFINITY_ROW = "infinity-emb (torch, cpu)"


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
    st = plain_model()
    embedders = {b: catalog.variant(L6.name, b).build() for b in backends}
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
    for b in [catalog.reference(L6.name).backend, *backends]:
        r = catalog.check(L6.name, b)
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
        [
            "backend",
            "gate",
            "cos mean",
            "cos min",
            "recall@10 fp32",
            "recall@10",
            "texts/s when gated",
        ],
        rows,
    )
    say(f"auto-selected backend for {L6.name}: {catalog.choose(L6.name)}")


@cache
def plain_model() -> Any:
    """The in-process baseline: SentenceTransformer on the bundled model, max_seq_length 256."""
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(str(L6.folder()), device="cpu")
    st.max_seq_length = 256
    return st


def http_embed_speed(client: httpx.Client, path: str, model: str, texts: list[str]) -> float:
    """texts/s of POST `path` {"model", "input"} over all `texts`, CALL texts a request, from
    CLIENTS concurrent clients (the OpenAI-style embeddings body both servers take)."""
    batches = [texts[i : i + CALL] for i in range(0, len(texts), CALL)]

    def send(batch: list[str]) -> None:
        post(client, path, {"model": model, "input": batch})

    started = time.perf_counter()
    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(send, batches))
    return len(texts) / (time.perf_counter() - started)


def infinity_speed(texts: list[str]) -> float | None:
    """texts/s of infinity-emb serving the bundled model, through its POST /embeddings with the
    same load as e2e(); None (with the reason printed) when it cannot run or disagrees with
    plain encode (cosine <= 0.999 on a sample)."""
    try:
        with (
            InfinityServer(L6.folder(), served_model_name=L6.name, batch_size=CALL) as server,
            httpx.Client(base_url=server.url, timeout=600) as client,
        ):
            sample = texts[:16]
            answer = post(client, "/embeddings", {"model": server.model, "input": sample})
            got = np.array([d["embedding"] for d in answer["data"]], dtype=np.float32)
            post(client, "/embeddings", {"model": server.model, "input": texts[:CALL]})  # warm up
            speed = http_embed_speed(client, "/embeddings", server.model, texts)
    except (InfinityUnavailable, RuntimeError, OSError, httpx.HTTPError) as exc:
        say(escape(f"infinity-emb skipped: {exc}"))
        return None
    want = plain_model().encode(sample, batch_size=32, normalize_embeddings=True)
    cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1)
    say(
        f"infinity-emb vs plain encode on {len(sample)} texts: "
        f"cos mean {cos.mean():.6f} min {cos.min():.6f}"
    )
    if cos.min() <= 0.999:
        say("infinity-emb skipped: its vectors differ from plain encode (cos min <= 0.999)")
        return None
    return speed


def e2e(texts: list[str], infinity: bool = True) -> None:
    """HTTP texts/s against plain encode of the same texts, ingest chunks/s against plain encode
    of the very chunks the collection makes (ingest embeds whole documents, not truncated ones)."""
    # the server decides from the gate reports and speed race cached in ~/.cache/embedstack:
    # make them now, so that it serves the chosen backend from its first request
    say(f"auto choice for the server: {Catalog(background=False).choose(L6.name)}")
    docs = [(str(i), t) for i, t in enumerate(texts)]
    chunk_texts = chunk_rounds(docs, 1)[0]
    rows = []
    env = server_env()  # the server keeps its gate reports in ~/.cache/embedstack
    for model in (f"{L6.name}@sentence-transformers", L6.name):
        with tempfile.TemporaryDirectory() as tmp, Server(Path(tmp), env) as server:
            client = server.client(timeout=600)
            post(client, "/v1/embeddings", {"model": model, "input": texts[:8]})  # load + select
            backend = client.get("/readyz").json().get("backends", {}).get(model, "?")
            http_speed = http_embed_speed(client, "/v1/embeddings", model, texts)
            post(client, "/v1/collections", {"name": "bench", "model": model, "chunking": CHUNKING})
            started = time.perf_counter()
            jobs = [
                post(client, "/v1/collections/bench/documents", {"documents": body})["job_id"]
                for body in batched([{"id": i, "text": t} for i, t in docs], 256)
            ]
            wait_jobs(client, jobs, timeout=3600)
            seconds = time.perf_counter() - started
            chunks = int(client.get("/v1/collections/bench").json().get("chunks", 0))
            name = f"{model} ({backend})"
            rows.append([name, http_speed, len(texts) / seconds, chunks / seconds])
    peer = infinity_speed(texts) if infinity else None
    plain = plain_encode_speed(texts)
    plain_chunks = plain_encode_speed(chunk_texts)
    out = []
    for name, http, docs_s, chunks_s in rows:
        out.append(
            [
                name,
                f"{http:.0f}",
                f"{http / plain:.2f}x",
                f"{docs_s:.0f}",
                f"{chunks_s:.0f}",
                f"{chunks_s / plain_chunks:.2f}x",
            ]
        )
    if peer is not None:
        out.append([INFINITY_ROW, f"{peer:.0f}", f"{peer / plain:.2f}x", "-", "-", "-"])
    cols = [
        "model (serving backend)",
        "POST /v1/embeddings texts/s",
        "vs plain encode",
        "ingest docs/s",
        "ingest chunks/s",
        "vs plain encode of the chunks",
    ]
    table(
        f"end to end, {len(texts)} texts -> {len(chunk_texts)} chunks; plain encode in-process: "
        f"{plain:.0f} texts/s, {plain_chunks:.0f} chunks/s",
        cols,
        out,
    )


def plain_encode_speed(texts: list[str], repeats: int = 2) -> float:
    """Plain SentenceTransformer.encode (batch 32) of the same texts, in this process."""
    st = plain_model()
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
    ap.add_argument(
        "--no-infinity", action="store_true", help="no infinity-emb row in the end-to-end table"
    )
    ap.add_argument("--cache-dir", type=Path, default=None)
    args = ap.parse_args()
    preflight(imports=("sentence_transformers",), corpora=("gcide",), files=(PYDOC_JSONL,))
    say(load_note())
    catalog = Catalog(args.cache_dir, background=False)
    all_backends = [v.backend for v in catalog.variants(L6.name) if not v.reference]
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
        e2e(corpora.get("GCIDE entries", corpora["pydoc paragraphs"]), not args.no_infinity)
    say(load_note())


if __name__ == "__main__":
    main()
