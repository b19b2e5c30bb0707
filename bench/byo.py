"""Bring-your-own vectors: loading an HNSW collection over HTTP against raw FAISS building the
same index from the same array, in the same run.

    python bench/byo.py --n 28000                      # base64 bulk and JSON lists
    python bench/byo.py --n 28000 --modes b64 --per-post 10000

Vectors: the cached all-MiniLM-L6-v2 embeddings of GCIDE entries (bench/gcide_vectors.py; the
first --n of the smallest cache that holds them; past the largest cache, noisy copies of it made
as bench/million.py makes its 1M vectors, copy-to-seed cosine 0.85). Raw: faiss.IndexHNSWFlat (M=32,
efConstruction=200, inner product) `add` of the whole array, in-process. Ours: a collection
with the same index settings, vectors POSTed as a user would (`json`: 1,000 documents per POST
of JSON lists; `b64`: POST /v1/collections/{name}/vectors, --per-post vectors as one base64
string per request; `npy`: the same route, multipart with an .npy file part and a JSON
field), timed from the first POST until every job is done (stored, acknowledged, indexed and
served). Target: ours <= 1.3x raw. Each mode runs right after its own raw build,
so both see the same machine load; the load average is printed with each. The CPU ratio
(the server process's CPU seconds from the first POST until indexed, over the raw build's CPU
seconds, OpenMP threads included) depends far less on what else runs on the machine.
"""

from __future__ import annotations

import argparse
import base64
import io
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import orjson

from common import Server, cpu_seconds, load_note, post, say, server_env, table, wait_jobs

HNSW = {"type": "hnsw", "M": 32, "ef_construction": 200, "ef_search": 64}
TARGET = 1.3
COPY_COS = 0.85  # noisy copies past the largest cache (bench/million.py)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=28_000, help="vectors (28,000)")
    p.add_argument(
        "--modes", default="npy,b64,json", help="upload formats, in order (npy,b64,json)"
    )
    p.add_argument(
        "--per-post", type=int, default=10_000, help="vectors per npy or b64 POST (10,000)"
    )
    return p.parse_args()


def vectors(n: int) -> tuple[np.ndarray, list[str]]:
    import gcide_vectors as gv

    sizes = sorted(int(p.stem.split("_")[-1]) for p in gv.CACHE.glob("gcide_l6_*.npy"))
    fit = [s for s in sizes if s >= n]
    if not fit:
        if not sizes:
            raise SystemExit(f"no cache of GCIDE vectors: python bench/gcide_vectors.py {n}")
        # more than any cache holds: noisy copies of the largest, as bench/million.py makes them
        from million import noisy_copies

        seeds, _ = gv.load_or_embed(sizes[-1])
        vecs, cos = noisy_copies(np.asarray(seeds, np.float32), n, COPY_COS, seed=0)
        say(f"{n:,} vectors: noisy copies of {len(seeds):,} cached GCIDE vectors (mean "
            f"copy-to-seed cosine {cos:.3f}; bench/million.py's noisy_copies)")  # fmt: skip
        return np.ascontiguousarray(vecs, dtype=np.float32), [f"copy {i}" for i in range(n)]
    vecs, texts = gv.load_or_embed(fit[0])
    return np.ascontiguousarray(vecs[:n], dtype=np.float32), texts[:n]


def raw_build(base: np.ndarray) -> tuple[float, float]:
    """Seconds and CPU seconds (this process, OpenMP threads included) of a raw build."""
    started, cpu = time.perf_counter(), time.process_time()
    index = faiss.IndexHNSWFlat(base.shape[1], HNSW["M"], faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = HNSW["ef_construction"]
    index.add(base)
    return time.perf_counter() - started, time.process_time() - cpu


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


def requests_of(
    base: np.ndarray,
    texts: list[str] | None,
    per_post: int,
    metadata: list[dict[str, Any]] | None,
) -> Iterator[tuple[np.ndarray, dict[str, Any]]]:
    """Per request: `per_post` vectors and what comes with them (ids v{row}, the first 80
    characters of each text and the metadata, when given)."""
    for start in range(0, len(base), per_post):
        part = base[start : start + per_post]
        stop = start + len(part)
        meta: dict[str, Any] = {"ids": [f"v{i}" for i in range(start, stop)]}
        if texts is not None:
            meta["texts"] = [t[:80] for t in texts[start:stop]]
        if metadata is not None:
            meta["metadata"] = metadata[start:stop]
        yield part, meta


def upload_b64(
    client: httpx.Client,
    name: str,
    base: np.ndarray,
    texts: list[str] | None,
    per_post: int,
    metadata: list[dict[str, Any]] | None = None,
) -> list[str]:
    """POST /v1/collections/{name}/vectors as JSON with base64 float32; the job ids."""
    jobs = []
    for part, meta in requests_of(base, texts, per_post, metadata):
        body = {**meta, "vectors": base64.b64encode(part.astype("<f4").tobytes()).decode()}
        jobs.append(post(client, f"/v1/collections/{name}/vectors", body)["job_id"])
    return jobs


def upload_npy(
    client: httpx.Client,
    name: str,
    base: np.ndarray,
    texts: list[str] | None,
    per_post: int,
    metadata: list[dict[str, Any]] | None = None,
) -> list[str]:
    """The same requests as multipart: an .npy file part and a JSON 'meta' field."""
    jobs = []
    for part, meta in requests_of(base, texts, per_post, metadata):
        buf = io.BytesIO()
        np.save(buf, np.ascontiguousarray(part, dtype=np.float32))
        r = client.post(
            f"/v1/collections/{name}/vectors",
            files={"vectors": ("v.npy", buf.getvalue(), "application/x-npy")},
            data={"meta": orjson.dumps(meta).decode()},
        )
        if r.status_code >= 300:
            raise RuntimeError(f"POST vectors (npy) -> {r.status_code}: {r.text[:500]}")
        jobs.append(r.json()["job_id"])
    return jobs


UPLOADS = {"b64": upload_b64, "npy": upload_npy}


def main() -> None:
    args = parse_args()
    say(f"bench/byo.py {' '.join(sys.argv[1:])}\n{load_note()}")
    base, texts = vectors(args.n)
    say(f"{len(base):,} vectors (384-d, all-MiniLM-L6-v2 GCIDE embeddings); faiss OpenMP threads: "
        f"{faiss.omp_get_max_threads()}")  # fmt: skip
    rows: list[list[object]] = []
    with (
        tempfile.TemporaryDirectory(prefix="embedstack-bench-") as tmp,
        Server(Path(tmp), server_env()) as server,
        server.client(timeout=600) as client,
    ):
        for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
            note = load_note()
            raw_s, raw_cpu = raw_build(base)
            name = f"byo_{mode}"
            post(client, "/v1/collections", {"name": name, "dim": 384, "metric": "cosine",
                                             "index": HNSW})  # fmt: skip
            assert server.proc is not None
            started, cpu = time.perf_counter(), cpu_seconds(server.proc.pid)
            if mode == "json":
                jobs = upload_json(client, name, base, texts)
            elif mode in UPLOADS:
                jobs = UPLOADS[mode](client, name, base, texts, args.per_post)
            else:
                raise SystemExit(f"unknown mode {mode!r}: use b64, npy or json")
            acked = time.perf_counter() - started
            wait_jobs(client, jobs, timeout=3600)
            ours = time.perf_counter() - started
            ours_cpu = cpu_seconds(server.proc.pid) - cpu
            served = client.get(f"/v1/collections/{name}").json().get("vectors")
            if served != len(base):
                raise SystemExit(f"{mode}: the index serves {served} vectors, not {len(base)}")
            say(f"{mode}: raw {raw_s:.2f} s ({raw_cpu:.2f} CPU s), ours {ours:.2f} s "
                f"({ours_cpu:.2f} server CPU s; acknowledged after {acked:.2f} s), {served:,} "
                f"vectors served ... {note}")  # fmt: skip
            rows.append([mode, len(base), raw_s, raw_cpu, acked, ours, ours_cpu, ours / raw_s,
                         ours_cpu / raw_cpu, note])  # fmt: skip
            client.delete(f"/v1/collections/{name}")
    table(
        f"Bring-your-own vectors into HNSW (M=32, efConstruction=200), {len(base):,} x 384",
        ["upload", "vectors", "raw FAISS build s", "raw CPU s", "ours acked s",
         "ours indexed s", "ours server CPU s", "ratio wall", "ratio CPU", "load before"],
        rows,
    )  # fmt: skip
    for mode, *_, ratio, cpu_ratio, _note in rows:
        say(f"[bold]RATIO {mode} upload until indexed / raw FAISS build = {ratio:.2f} "
            f"(target <= {TARGET}); server CPU / raw build CPU = {cpu_ratio:.2f}[/]")  # fmt: skip
    say(f"done. {load_note()}")


if __name__ == "__main__":
    main()
