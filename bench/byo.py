"""Bring-your-own vectors: loading an HNSW collection over HTTP against raw FAISS building the
same index from the same array, in the same run.

    python bench/byo.py --n 28000                      # base64 bulk and JSON lists
    python bench/byo.py --n 28000 --modes b64 --per-post 10000

Vectors: the cached all-MiniLM-L6-v2 embeddings of GCIDE entries (bench/gcide_vectors.py; the
first --n of the smallest cache that holds them). Raw: faiss.IndexHNSWFlat (M=32,
efConstruction=200, inner product) `add` of the whole array, in-process. Ours: a collection
with the same index settings, vectors POSTed as a user would (`json`: 1,000 documents per POST
of JSON lists; `b64`: POST /v1/collections/{name}/vectors, --per-post vectors as one base64
string per request), timed from the first POST until every job is done (stored, acknowledged,
indexed and served). Target: ours <= 1.3x raw. Each mode runs right after its own raw build,
so both see the same machine load; the load average is printed with each.
"""

from __future__ import annotations

import argparse
import base64
import sys
import tempfile
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import orjson

from common import Server, load_note, post, say, server_env, table, wait_jobs

HNSW = {"type": "hnsw", "M": 32, "ef_construction": 200, "ef_search": 64}
TARGET = 1.3


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=28_000, help="vectors (28,000)")
    p.add_argument("--modes", default="b64,json", help="upload formats, in order (b64,json)")
    p.add_argument("--per-post", type=int, default=10_000, help="vectors per b64 POST (10,000)")
    return p.parse_args()


def vectors(n: int) -> tuple[np.ndarray, list[str]]:
    import gcide_vectors as gv

    sizes = sorted(int(p.stem.split("_")[-1]) for p in gv.CACHE.glob("gcide_l6_*.npy"))
    fit = [s for s in sizes if s >= n]
    if not fit:
        raise SystemExit(
            f"no cache of >= {n:,} GCIDE vectors (have {sizes}): python bench/gcide_vectors.py {n}"
        )
    vecs, texts = gv.load_or_embed(fit[0])
    return np.ascontiguousarray(vecs[:n], dtype=np.float32), texts[:n]


def raw_build(base: np.ndarray) -> float:
    started = time.perf_counter()
    index = faiss.IndexHNSWFlat(base.shape[1], HNSW["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW["ef_construction"]
    index.add(base)
    return time.perf_counter() - started


def upload_json(client: httpx.Client, name: str, base: np.ndarray, texts: list[str]) -> list[str]:
    jobs = []
    for start in range(0, len(base), 1000):
        docs = [
            {"id": f"v{i}", "text": texts[i][:80], "vector": base[i]}
            for i in range(start, min(start + 1000, len(base)))
        ]
        body = orjson.dumps({"documents": docs}, option=orjson.OPT_SERIALIZE_NUMPY)
        jobs.append(post(client, f"/v1/collections/{name}/documents", body)["job_id"])
    return jobs


def upload_b64(
    client: httpx.Client, name: str, base: np.ndarray, texts: list[str], per_post: int
) -> list[str]:
    jobs = []
    for start in range(0, len(base), per_post):
        part = base[start : start + per_post]
        body = {
            "ids": [f"v{i}" for i in range(start, start + len(part))],
            "vectors": base64.b64encode(part.astype("<f4").tobytes()).decode(),
            "texts": [t[:80] for t in texts[start : start + len(part)]],
        }
        jobs.append(post(client, f"/v1/collections/{name}/vectors", body)["job_id"])
    return jobs


def main() -> None:
    args = parse_args()
    say(f"bench/byo.py {' '.join(sys.argv[1:])}\n{load_note()}")
    base, texts = vectors(args.n)
    say(f"{len(base):,} GCIDE vectors (384-d, all-MiniLM-L6-v2, cached); faiss OpenMP threads: "
        f"{faiss.omp_get_max_threads()}")  # fmt: skip
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="embedstack-bench-") as tmp,
        Server(Path(tmp), server_env()) as server,
        server.client(timeout=600) as client,
    ):
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            note = load_note()
            raw_s = raw_build(base)
            name = f"byo_{mode}"
            post(client, "/v1/collections", {"name": name, "dim": 384, "metric": "cosine",
                                             "index": HNSW})  # fmt: skip
            started = time.perf_counter()
            if mode == "json":
                jobs = upload_json(client, name, base, texts)
            elif mode == "b64":
                jobs = upload_b64(client, name, base, texts, args.per_post)
            else:
                raise SystemExit(f"unknown mode {mode!r}: use b64 or json")
            acked = time.perf_counter() - started
            wait_jobs(client, jobs, timeout=3600)
            ours = time.perf_counter() - started
            served = client.get(f"/v1/collections/{name}").json().get("vectors")
            if served != len(base):
                raise SystemExit(f"{mode}: the index serves {served} vectors, not {len(base)}")
            say(f"{mode}: raw {raw_s:.2f} s, ours {ours:.2f} s (acknowledged after {acked:.2f} s)"
                f", {served:,} vectors served ... {note}")  # fmt: skip
            rows.append([mode, len(base), raw_s, acked, ours, ours / raw_s, note])
            client.delete(f"/v1/collections/{name}")
    table(
        f"Bring-your-own vectors into HNSW (M=32, efConstruction=200), {len(base):,} x 384",
        ["upload", "vectors", "raw FAISS build s", "ours acked s", "ours indexed s",
         "ratio ours/raw", "load before"],
        rows,
    )  # fmt: skip
    for mode, *_, ratio, _note in rows:
        say(f"[bold]RATIO {mode} upload until indexed / raw FAISS build = {ratio:.2f} "
            f"(target <= {TARGET})[/]")  # fmt: skip
    say(f"done. {load_note()}")


if __name__ == "__main__":
    main()
