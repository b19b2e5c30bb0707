"""Query latency and throughput over HTTP, against raw in-process FAISS on the same vectors.

Vectors: real all-MiniLM-L6-v2 embeddings of distinct GCIDE entries (bench/gcide_vectors.py,
cached under ~/.cache/embedstack/). The last --queries of them are held out as queries; the first
--n go into a bring-your-own-vectors collection (dim 384, cosine, HNSW M=32, efConstruction=200,
efSearch=64) through POST /v1/collections/{name}/vectors (base64), 10,000 per request.

Measured: HTTP vector queries (k=10) from 1 keep-alive client, alternating in blocks of 100 with
the baseline (faiss.IndexHNSWFlat, same parameters, one query per call, in-process) so that both
see the same machine load; then several concurrent clients (threads); recall@10 against exact
numpy search, so latency is at a known recall. Then text queries on a smaller collection with
the bundled model (query embedding included), alternating with in-process
SentenceTransformer.encode + FAISS search.

Without --n, the run uses 100,000 vectors if a cache of >= 100,500 exists, else 20,000. Any larger
cache serves a smaller run (same seeded order). Embedding GCIDE with fp32 sentence-transformers
runs at tens of entries/s on 2 cores, so a missing cache costs minutes (20,500 entries) to an
hour (100,500, `python bench/query.py --n 100000`), once.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import orjson

from common import (
    THREADS_HELP,
    Server,
    batched,
    cpu_seconds,
    load_note,
    post,
    preflight,
    say,
    server_env,
    table,
    use_torch_threads,
    wait_jobs,
)
from embedstack.index.gate import recall_at_k

HNSW = {"type": "hnsw", "M": 32, "ef_construction": 200, "ef_search": 64}
BIG_N = 100_000
SMALL_N = 20_000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--n",
        type=int,
        default=None,
        help=f"vectors in the collection (default {BIG_N:,} if cached, else {SMALL_N:,})",
    )
    p.add_argument("--queries", type=int, default=500, help="held-out query vectors (500)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (10)")
    p.add_argument(
        "--rounds",
        type=int,
        default=2,
        help="each measurement sends every query this many times (2)",
    )
    p.add_argument(
        "--concurrency",
        default="4,16",
        help="comma-separated concurrent client (thread) counts measured after the sequential "
        "run (default 4,16; empty: none)",
    )
    p.add_argument(
        "--text-docs",
        type=int,
        default=1000,
        help="documents in the text collection (default 1000; 0 skips text queries)",
    )
    p.add_argument("--text-queries", type=int, default=200, help="text queries (200)")
    p.add_argument("--torch-threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument(
        "--budget-ms",
        type=float,
        default=10_000.0,
        help="budget_ms of each vector query (default 10000: measure latency, not shedding)",
    )
    return p.parse_args()


# -- data ------------------------------------------------------------------------------------
def cached_vectors(need: int) -> tuple[np.ndarray, list[str]]:
    """The first `need` cached GCIDE vectors and texts; any bigger cache serves (same order)."""
    import gcide_vectors as gv

    for have in cache_sizes():
        if have >= need and gv.cache_paths(have)[1].exists():
            vecs, texts = gv.load_or_embed(have)
            if texts[:need] == gv.gcide_texts(need):  # a prefix of the same seeded order
                return np.ascontiguousarray(vecs[:need], dtype=np.float32), texts[:need]
    say(f"no cache of >= {need:,} GCIDE vectors: embedding them once (minutes or more)")
    vecs, texts = gv.load_or_embed(need)
    return np.ascontiguousarray(vecs, dtype=np.float32), texts


def cache_sizes() -> list[int]:
    """Sizes of the cached GCIDE vector sets, smallest first."""
    import gcide_vectors as gv

    return sorted(int(p.stem.split("_")[-1]) for p in gv.CACHE.glob("gcide_l6_*.npy"))


def default_n(queries: int) -> int:
    return BIG_N if any(s >= BIG_N + queries for s in cache_sizes()) else SMALL_N


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k row ids by inner product (cosine on unit vectors), numpy brute force."""
    out = []
    for part in batched(queries, 100):
        scores = np.asarray(part) @ base.T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
        out.append(np.take_along_axis(top, order, axis=1))
    return np.concatenate(out)


# -- measurement -----------------------------------------------------------------------------
def percentiles(lat: np.ndarray) -> list[float]:
    return [float(np.percentile(lat, p)) * 1000 for p in (50, 95, 99)]


def paired(
    first: Callable[[int], Any], second: Callable[[int], Any], n: int, block: int
) -> tuple[np.ndarray, np.ndarray, list[Any], list[Any]]:
    """first(i) and second(i) for i in 0..n-1, alternating in blocks of `block` calls, so that
    both see the same machine load while each stays warm within a block.

    Returns both latency arrays (seconds) and both result lists, in index order."""
    lat = np.empty((2, n))
    out: tuple[list[Any], list[Any]] = ([None] * n, [None] * n)
    for start in range(0, n, block):
        for j, fn in enumerate((first, second)):
            for i in range(start, min(start + block, n)):
                t = time.perf_counter()
                out[j][i] = fn(i)
                lat[j, i] = time.perf_counter() - t
    return lat[0], lat[1], out[0], out[1]


def cpu_per_call(fn: Callable[[int], Any], n: int, server: Server | None = None) -> float:
    """CPU seconds per call of fn(0..n-1): this process's (OpenMP threads included), or with
    `server`, the server process's (all its threads: loop, pools, background) instead. CPU time
    barely depends on what else loads the machine; wall time does."""

    def now() -> float:
        if server is None:
            return time.process_time()
        assert server.proc is not None
        return cpu_seconds(server.proc.pid)

    before = now()
    for i in range(n):
        fn(i)
    return (now() - before) / n


def poster(client: httpx.Client, path: str, bodies: list[bytes]) -> Callable[[int], bytes]:
    """fn(i): POST bodies[i] on a keep-alive client, return the answer's bytes."""
    headers = {"content-type": "application/json"}

    def send(i: int) -> bytes:
        r = client.post(path, content=bodies[i], headers=headers)
        if r.status_code != 200:
            raise RuntimeError(f"query -> {r.status_code}: {r.text[:300]}")
        return r.content

    return send


def getter(client: httpx.Client, path: str) -> Callable[[int], bytes]:
    """fn(i): GET `path` on a keep-alive client, return the answer's bytes."""

    def send(i: int) -> bytes:
        r = client.get(path)
        if r.status_code != 200:
            raise RuntimeError(f"GET {path} -> {r.status_code}: {r.text[:300]}")
        return r.content

    return send


def http_load(
    url: str, path: str, bodies: list[bytes], clients: int, get: bool = False
) -> tuple[np.ndarray, list[bytes], float]:
    """Send every body once from `clients` keep-alive clients (threads) sharing one work list
    (with `get`, a GET of `path` per body instead: the same client loop, for a baseline)."""
    lat = np.empty(len(bodies))
    out: list[bytes] = [b""] * len(bodies)
    work = iter(range(len(bodies)))
    lock = threading.Lock()

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            send = getter(c, path) if get else poster(c, path, bodies)
            while True:
                with lock:
                    i = next(work, None)
                if i is None:
                    return
                t = time.perf_counter()
                out[i] = send(i)
                lat[i] = time.perf_counter() - t

    threads = [threading.Thread(target=client) for _ in range(clients)]
    started = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return lat, out, time.perf_counter() - started


def hit_rows(answer: bytes, k: int) -> list[int]:
    return [int(h["document_id"][1:]) for h in orjson.loads(answer)["hits"][:k]]


def took_ms(answers: list[bytes]) -> float:
    return float(np.median([orjson.loads(a)["took_ms"] for a in answers]))


def build_hnsw(base: np.ndarray) -> Any:
    index = faiss.IndexHNSWFlat(base.shape[1], HNSW["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW["ef_construction"]
    index.add(base)
    index.hnsw.efSearch = HNSW["ef_search"]
    return index


def upload(client: httpx.Client, name: str, base: np.ndarray, texts: list[str]) -> float:
    """BYO vectors through the bulk route (base64, 10,000 per POST) with the first 8 words of
    each text; seconds until every job is done (indexed)."""
    from byo import upload_b64

    started = time.perf_counter()
    short = [" ".join(t.split()[:8]) for t in texts]
    wait_jobs(client, upload_b64(client, name, base, short, 10_000), timeout=3600)
    return time.perf_counter() - started


# -- the two parts ---------------------------------------------------------------------------
def vector_part(
    args: argparse.Namespace, server: Server, base: np.ndarray, texts: list[str], qv: np.ndarray
) -> None:
    k, levels = args.k, [int(c) for c in args.concurrency.split(",") if c.strip()]
    truth = exact_top(base, qv, k)
    say(f"raw FAISS: building HNSW over {len(base):,} vectors in-process ... {load_note()}")
    started = time.perf_counter()
    index = build_hnsw(base)
    build_s = time.perf_counter() - started
    with server.client() as client:
        post(client, "/v1/collections", {"name": "vec", "dim": 384, "metric": "cosine",
                                         "index": HNSW})  # fmt: skip
        say(f"uploading {len(base):,} vectors over HTTP ... {load_note()}")
        upload_s = upload(client, "vec", base, texts)
        say(f"uploaded and indexed in {upload_s:.1f} s ({len(base) / upload_s:,.0f} vectors/s; "
            f"raw FAISS build: {build_s:.1f} s); measuring queries ... {load_note()}")  # fmt: skip
        reps = np.tile(np.arange(len(qv)), args.rounds)
        # a generous budget: this measures latency and throughput, not shedding (bench/goodput.py)
        bodies = [
            orjson.dumps({"vector": qv[i].tolist(), "k": k, "budget_ms": args.budget_ms})
            for i in reps
        ]
        path = "/v1/collections/vec/query"
        http = poster(client, path, bodies)

        def raw(i: int) -> Any:
            return index.search(qv[reps[i] : reps[i] + 1], k)

        paired(raw, http, 50, 50)  # warm-up
        raw_lat, http_lat, raw_out, answers = paired(raw, http, len(reps), 100)
        raw_cpu, server_cpu = cpu_per_call(raw, len(reps)), cpu_per_call(http, len(reps), server)
    answers_1 = answers
    raw_found = [ids[0].tolist() for _, ids in raw_out[: len(qv)]]
    http_found = [hit_rows(a, k) for a in answers[: len(qv)]]
    raw_qps, http_qps = len(reps) / raw_lat.sum(), len(reps) / http_lat.sum()
    rows: list[list[object]] = [
        ["raw FAISS HNSW in-process, 1 query per call", len(reps), *percentiles(raw_lat), "-",
         raw_qps, recall_at_k(raw_found, truth, k)],
        ["HTTP vector query, 1 keep-alive client", len(reps), *percentiles(http_lat),
         took_ms(answers), http_qps, recall_at_k(http_found, truth, k)],
    ]  # fmt: skip
    qps = {1: http_qps}
    healthz: dict[int, float] = {}
    for c in levels:
        # the server's own empty route first, same client loop and concurrency: the ceiling
        lat, _, wall = http_load(server.url, "/healthz", bodies, c, get=True)
        healthz[c] = len(bodies) / wall
        rows.append([f"GET /healthz, {c} concurrent clients", len(bodies), *percentiles(lat),
                     "-", healthz[c], "-"])  # fmt: skip
        lat, answers, wall = http_load(server.url, path, bodies, c)
        found = [hit_rows(a, k) for a in answers[: len(qv)]]
        qps[c] = len(bodies) / wall
        rows.append([f"HTTP vector query, {c} concurrent clients", len(bodies), *percentiles(lat),
                     took_ms(answers), qps[c], recall_at_k(found, truth, k)])  # fmt: skip
    say(f"done. {load_note()}")
    table(
        f"Vector queries, k={k}, {len(base):,} vectors (384-d, HNSW M=32 efSearch=64)",
        ["path", "requests", "p50 ms", "p95 ms", "p99 ms", "server took p50 ms", "QPS",
         "recall@10"],
        rows,
    )  # fmt: skip
    best = max(qps, key=lambda c: qps[c])
    p50 = percentiles(http_lat)[0] / percentiles(raw_lat)[0]
    say(f"[bold]RATIO HTTP p50 (1 client) / raw FAISS p50 = {p50:.1f}[/]")
    took = took_ms(answers_1) / percentiles(raw_lat)[0]
    say(f"[bold]RATIO server took_ms p50 (1 client) / raw FAISS p50 = {took:.2f} (target <= 2)[/]")
    for c, base_qps in healthz.items():
        say(f"[bold]RATIO query QPS / GET /healthz QPS at {c} clients = "
            f"{qps[c] / base_qps:.2f} (target >= 0.5)[/]")  # fmt: skip
    say(f"[bold]RATIO server CPU per query (all its threads, 1 client) / raw FAISS CPU per "
        f"search = {server_cpu * 1e6:.0f} us / {raw_cpu * 1e6:.0f} us = "
        f"{server_cpu / raw_cpu:.2f}[/]")  # fmt: skip
    say(f"[bold]RATIO HTTP QPS / raw FAISS QPS = {http_qps / raw_qps:.3f} (1 client), "
        f"{qps[best] / raw_qps:.3f} (best: {best} client(s))[/]")  # fmt: skip


def text_part(
    args: argparse.Namespace, server: Server, base: np.ndarray, texts: list[str], q_texts: list[str]
) -> None:
    from sentence_transformers import SentenceTransformer

    from embedstack.inference.models.bundled import L6

    n = min(args.text_docs, len(texts))
    queries = [" ".join(t.split()[:10]) for t in q_texts[: args.text_queries]]
    say(f"\ntext collection: {n:,} GCIDE entries through the bundled model ... {load_note()}")
    model = SentenceTransformer(str(L6.folder()), device="cpu")
    index = build_hnsw(base[:n])

    def plain(i: int) -> Any:
        vec = model.encode([queries[i]], normalize_embeddings=True, convert_to_numpy=True)
        return index.search(np.asarray(vec, dtype=np.float32), args.k)

    with server.client() as client:
        post(client, "/v1/collections", {"name": "text", "model": "all-MiniLM-L6-v2",
                                         "index": HNSW})  # fmt: skip
        jobs = [
            post(client, "/v1/collections/text/documents",
                 {"documents": [{"id": f"t{i}", "text": texts[i]} for i in part]})["job_id"]
            for part in batched(range(n), 500)
        ]  # fmt: skip
        wait_jobs(client, jobs)
        bodies = [orjson.dumps({"text": q, "k": args.k}) for q in queries]
        http = poster(client, "/v1/collections/text/query", bodies)
        paired(plain, http, min(20, len(queries)), 20)  # warm-up
        raw_lat, http_lat, _, answers = paired(plain, http, len(queries), 20)
    say(f"done. {load_note()}")
    table(
        f"Text queries (10-word GCIDE snippets), k={args.k}, {n:,} documents, query embedding "
        "included",
        ["path", "requests", "p50 ms", "p95 ms", "p99 ms", "server took p50 ms", "QPS"],
        [
            ["in-process ST encode + FAISS search", len(queries), *percentiles(raw_lat), "-",
             len(queries) / raw_lat.sum()],
            ["HTTP text query, 1 keep-alive client", len(queries), *percentiles(http_lat),
             took_ms(answers), len(queries) / http_lat.sum()],
        ],
    )  # fmt: skip
    ratio = percentiles(http_lat)[0] / percentiles(raw_lat)[0]
    say(f"[bold]RATIO HTTP text query p50 / in-process encode+search p50 = {ratio:.2f}[/]")


def main() -> None:
    args = parse_args()
    preflight(imports=("sentence_transformers",), corpora=("gcide",))
    n = args.n or default_n(args.queries)
    say(f"bench/query.py {' '.join(sys.argv[1:])}\n{load_note()}")
    vecs, texts = cached_vectors(n + args.queries)
    base, qv = vecs[:n], vecs[n:]
    say(f"{n:,} GCIDE vectors + {len(qv)} held-out queries (all-MiniLM-L6-v2, cached)")
    with (
        tempfile.TemporaryDirectory(prefix="embedstack-bench-") as tmp,
        Server(Path(tmp), server_env(**use_torch_threads(args.torch_threads))) as server,
    ):
        vector_part(args, server, base, texts[:n], qv)
        if args.text_docs > 0:
            text_part(args, server, base, texts[:n], texts[n:])


if __name__ == "__main__":
    main()
