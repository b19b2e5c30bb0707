"""1M vectors: load through the bulk vectors route, then query latency through HTTP against raw
FAISS searching the very index the server built, in one run; restart time from the snapshot.

    python bench/million.py                    # 1,000,000 x 384, tens of minutes on 2 cores
    python bench/million.py --n 200000         # a quicker look

Vectors (real structure, then noisy copies; printed with the run): the cached all-MiniLM-L6-v2
embeddings of distinct GCIDE entries (bench/gcide_vectors.py; the largest cache). Its last
--queries entries are held out as the queries; every other entry is a seed, and vector j is
seed (j mod seeds) plus Gaussian noise drawn from the seeds' own covariance (so the noise lies
along the directions real embeddings vary in, not spread evenly over all 384), scaled so a copy
keeps a cosine of about --copy-cos with its seed, then L2-normalized. Every vector carries
metadata {"bucket": j mod 10}, so a filter on one bucket has 10% selectivity.

Steps: exact top-10 of every query (faiss.knn, brute force); create a collection (HNSW M=32,
efConstruction=--ef-construction, cosine) and POST the vectors to the bulk route (--format: an
.npy part, or base64 float32; --per-post per request), timed until every job is done; stop the
server (it snapshots its index on the way out) and start it again, timed until the collection
answers a query; read the server's own snapshot (index.faiss) in this process as the raw
baseline, and pick the smallest efSearch whose raw recall@10 reaches --floor. Then per query,
alternating in blocks of 100: raw `index.search` (one query per call, one OpenMP thread, as the
server runs it) and an HTTP query with that ef_search, from one keep-alive client; then
--clients concurrent clients; then --filter-queries queries with the 10% filter (exact truth
over the bucket). Reports p50/p95/p99 of HTTP, of the server's own took_ms and of raw FAISS,
recall@10 of each, their ratios, the server's resident memory and the data directory's size on
disk.

Iterating on the serving side without reloading: `--data-dir DIR` keeps the server's data (DIR/data)
and log there, with DIR/load.json noting what was loaded and how long it took. A later run with the
same --data-dir and the same data options (--n, --seed, --copy-cos, --ef-construction,
--queries) starts the server on that data (the start is the restart from the snapshot that is
timed) and goes straight to the queries. `--load-only` stops after the load and restart.
`--profile OUT.prof` runs the server under bench/common.py's CPU profiler during the
1-client measurement.

    python bench/million.py --data-dir /tmp/million --load-only   # once, ~25 min
    python bench/million.py --data-dir /tmp/million                # queries only, minutes
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import faiss
import httpx
import numpy as np
import orjson

from byo import UPLOADS
from common import Server, load_note, machine_note, post, say, server_env, table, wait_jobs
from embedstack.index.gate import recall_at_k
from query import cache_sizes, cached_vectors, http_load, paired, percentiles, poster

K = 10
EF_STEPS = (64, 96, 128, 192, 256, 384, 512)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=1_000_000, help="vectors (1,000,000)")
    p.add_argument("--queries", type=int, default=500, help="held-out real query vectors (500)")
    p.add_argument("--rounds", type=int, default=2, help="times each query is sent (2)")
    p.add_argument("--copy-cos", type=float, default=0.85, help="copy-to-seed cosine (0.85)")
    p.add_argument("--ef-construction", type=int, default=100, help="HNSW efConstruction (100)")
    p.add_argument("--per-post", type=int, default=10_000, help="vectors per POST (10,000)")
    p.add_argument("--format", choices=sorted(UPLOADS), default="npy", help="body format (npy)")
    p.add_argument("--floor", type=float, default=0.95, help="recall@10 to reach (0.95)")
    p.add_argument("--clients", type=int, default=2, help="concurrent clients measured (2)")
    p.add_argument("--filter-queries", type=int, default=100, help="filtered queries (100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", type=Path, default=None,
                   help="keep the server's data here and reuse it in later runs with the same "
                   "data options (default: a temporary dir, removed)")  # fmt: skip
    p.add_argument("--load-only", action="store_true", help="stop after the load and restart")
    p.add_argument("--server-setting", action="append", default=[], metavar="ENV=VALUE",
                   help="an EMBEDSTACK_* setting for the server, e.g. "
                   "EMBEDSTACK_RECALL_SAMPLE_FRACTION=0 (repeatable)")  # fmt: skip
    p.add_argument("--profile", type=Path, default=None,
                   help="CPU profile (pstats) of the server during the 1-client run")  # fmt: skip
    return p.parse_args()


# -- data -------------------------------------------------------------------------------------
def noisy_copies(seeds: np.ndarray, n: int, copy_cos: float, seed: int) -> tuple[np.ndarray, float]:
    """n unit vectors: seed j mod len(seeds) plus noise ~ N(0, a^2 cov(seeds)), a chosen so a
    copy's cosine with its seed is about `copy_cos`. Returns them and the measured mean cosine."""
    cov = np.cov(seeds, rowvar=False)
    w, v = np.linalg.eigh(cov)
    root = (v * np.sqrt(np.maximum(w, 0.0))).astype(np.float32)  # cov = root @ root.T
    scale = float(np.sqrt((1.0 / copy_cos**2 - 1.0) / np.trace(cov)))
    rng = np.random.default_rng(seed)
    out = np.empty((n, seeds.shape[1]), dtype=np.float32)
    step = 100_000
    for start in range(0, n, step):
        stop = min(start + step, n)
        z = rng.standard_normal((stop - start, seeds.shape[1]), dtype=np.float32)
        part = seeds[np.arange(start, stop) % len(seeds)] + scale * (z @ root.T)
        out[start:stop] = part / np.linalg.norm(part, axis=1, keepdims=True)
    sample = np.arange(min(n, 10_000))
    cos = float(np.mean(np.sum(out[sample] * seeds[sample % len(seeds)], axis=1)))
    return out, cos


def exact(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    _, ids = faiss.knn(queries, base, k, metric=faiss.METRIC_INNER_PRODUCT)
    return ids


# -- server side ------------------------------------------------------------------------------
def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def du_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def snapshot_index(data: Path) -> tuple[Any, np.ndarray]:
    """The server's current snapshot of the collection: its faiss structure and, per position,
    the row number of the vector (v{row}) it holds (read from the store's chunks)."""
    found = sorted(data.glob("indexes/vec/*/snap-*/data/index.faiss"))
    if len(found) != 1:
        raise SystemExit(f"expected one snapshot of the index, found {found}")
    folder = found[0].parent
    index = faiss.read_index(str(found[0]))
    chunk_ids = np.load(folder / "ids.npy")
    with sqlite3.connect(f"file:{data / 'store.db'}?mode=ro", uri=True) as db:
        owner = dict(db.execute("SELECT id, document_id FROM chunks WHERE collection='vec'"))
    rows = np.array([int(owner[int(c)][1:]) for c in chunk_ids], dtype=np.int64)
    return index, rows


def restart_seconds(server: Server, client_body: bytes) -> float:
    """Stop the server (it snapshots on the way out), start it again; seconds from the start
    until the collection answers a query."""
    server.stop(grace=600)
    started = time.perf_counter()
    server.start(timeout=1800)
    with server.client(timeout=600) as c:
        answered(c, client_body)
    return time.perf_counter() - started


def answered(client: httpx.Client, body: bytes, timeout: float = 1800) -> None:
    """POST a query until it is answered: the first ones after a start (or the first filter
    on a key, which reads its column) may wait past their budget and get a 429."""
    deadline = time.monotonic() + timeout
    while True:
        r = client.post("/v1/collections/vec/query", content=body,
                        headers={"content-type": "application/json"})  # fmt: skip
        if r.status_code == 200:
            return
        if r.status_code != 429 or time.monotonic() > deadline:
            raise RuntimeError(f"query -> {r.status_code}: {r.text[:300]}")
        time.sleep(0.1)


# -- measurement -----------------------------------------------------------------------------
def took(answers: list[bytes]) -> np.ndarray:
    return np.array([orjson.loads(a)["took_ms"] for a in answers]) / 1000.0


def doc_rows(answer: bytes) -> list[int]:
    return [int(h["document_id"][1:]) for h in orjson.loads(answer)["hits"][:K]]


def stage_means(metrics: str) -> str:
    """Mean ms and count per stage of the query route, from the server's /metrics text."""
    sums: dict[str, float] = {}
    counts: dict[str, float] = {}
    for line in metrics.splitlines():
        for name, into in (("_sum{", sums), ("_count{", counts)):
            if line.startswith("embedstack_stage_seconds" + name) and 'route="query"' in line:
                stage = line.split('stage="', 1)[1].split('"', 1)[0]
                into[stage] = float(line.rsplit(" ", 1)[1])
    return ", ".join(
        f"{stage} {1000 * sums[stage] / counts[stage]:.3f} ms x {counts[stage]:.0f}"
        for stage in sorted(sums)
        if counts.get(stage)
    )


def pick_ef(index: Any, qv: np.ndarray, truth: np.ndarray, rows: np.ndarray, floor: float) -> int:
    for ef in EF_STEPS:
        index.hnsw.efSearch = ef
        _, pos = index.search(qv, K)
        if recall_at_k(rows[pos].tolist(), truth, K) >= floor:
            return ef
    return EF_STEPS[-1]


LOADED = "load.json"  # in --data-dir: what was loaded there, and how long it took


def data_options(args: argparse.Namespace) -> dict[str, Any]:
    """The options that decide the loaded data: a kept data dir serves a run with the same."""
    keys = ("n", "queries", "seed", "copy_cos", "ef_construction")
    return {k: getattr(args, k) for k in keys}


def loaded_before(workdir: Path, args: argparse.Namespace) -> dict[str, Any] | None:
    """What DIR/load.json says was loaded into a kept data dir, if it matches these options;
    SystemExit if the dir holds data of other options (no silent mix of two runs)."""
    note = workdir / LOADED
    if not note.exists():
        if (workdir / "data").exists():
            raise SystemExit(f"{workdir}/data exists without {LOADED} (an interrupted load?): "
                             "remove it or pick another --data-dir")  # fmt: skip
        return None
    done: dict[str, Any] = orjson.loads(note.read_bytes())
    if done["options"] != data_options(args):
        raise SystemExit(f"{workdir} holds data loaded with {done['options']}, not "
                         f"{data_options(args)}: pick another --data-dir")  # fmt: skip
    return done


def load(server: Server, args: argparse.Namespace, base: np.ndarray) -> dict[str, Any]:
    """Create the collection and POST every vector; seconds until acknowledged and served."""
    hnsw = {"type": "hnsw", "M": 32, "ef_construction": args.ef_construction, "ef_search": 64}
    with server.client(timeout=600) as client:
        post(client, "/v1/collections", {"name": "vec", "dim": 384, "metric": "cosine",
                                         "index": hnsw})  # fmt: skip
        meta = [{"bucket": i % 10} for i in range(args.n)]
        say(f"loading {args.n:,} vectors, {args.per_post:,} per POST ... {load_note()}")
        started = time.perf_counter()
        jobs = UPLOADS[args.format](client, "vec", base, None, args.per_post, meta)
        acked = time.perf_counter() - started
        wait_jobs(client, jobs, timeout=7200, poll=0.5)
        load_s = time.perf_counter() - started
        served = client.get("/v1/collections/vec").json().get("vectors")
    assert server.proc is not None
    say(f"loaded: acknowledged after {acked:.0f} s, indexed and served after {load_s:.0f} s "
        f"({args.n / load_s:,.0f} vectors/s), {served:,} served; server RSS "
        f"{rss_mib(server.proc.pid):,.0f} MiB ... {load_note()}")  # fmt: skip
    return {"load_s": load_s, "acked_s": acked, "load_note": load_note()}


def main() -> None:
    args = parse_args()
    say(f"bench/million.py {' '.join(sys.argv[1:])}\n{machine_note()}\n{load_note()}")
    have = max(cache_sizes(), default=0)
    if have <= args.queries:
        raise SystemExit("no GCIDE vector cache: python bench/gcide_vectors.py 28500")
    real, _ = cached_vectors(have)
    seeds, qv = real[: -args.queries], np.ascontiguousarray(real[-args.queries :])
    started = time.perf_counter()
    base, cos = noisy_copies(seeds, args.n, args.copy_cos, args.seed)
    truth = exact(base, qv, K)
    top1 = float(np.mean(np.sum(base[truth[:, 0]] * qv, axis=1)))
    say(f"{args.n:,} vectors: noisy copies of {len(seeds):,} real GCIDE MiniLM seeds, mean "
        f"copy-to-seed cosine {cos:.3f}; {len(qv)} held-out real queries, mean top-1 cosine "
        f"{top1:.3f}; made with exact truth in {time.perf_counter() - started:.0f} s")  # fmt: skip
    bucket = 3
    in_bucket = np.flatnonzero(np.arange(args.n) % 10 == bucket)
    ftruth = in_bucket[exact(np.ascontiguousarray(base[in_bucket]), qv, K)]
    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="million-")))
        else:
            workdir = Path(args.data_dir)
            workdir.mkdir(parents=True, exist_ok=True)
        done = loaded_before(workdir, args)
        settings = dict(kv.split("=", 1) for kv in args.server_setting)
        server = Server(workdir, server_env(**settings), profile=args.profile)
        stack.callback(server.stop, grace=600)
        probe = orjson.dumps({"vector": qv[0].tolist(), "k": K, "budget_ms": 10_000})
        if done is None:
            with server:
                loaded = load(server, args, base)
            done = {"options": data_options(args), **loaded}
            (workdir / LOADED).write_bytes(orjson.dumps(done))
            restart_s = restart_seconds(server, probe)  # the stop above snapshotted the index
        else:
            say(f"reusing the data loaded in {workdir} ({done['load_s']:.0f} s until served, "
                f"{done['acked_s']:.0f} s acknowledged, at {done['load_note']})")  # fmt: skip
            restart_s = restart_seconds(server, probe)
        rss = rss_mib(server.proc.pid)  # type: ignore[union-attr]
        disk = du_mib(workdir / "data")
        say(f"restart until the first answer: {restart_s:.1f} s; RSS {rss:,.0f} MiB; data "
            f"dir {disk:,.0f} MiB ... {load_note()}")  # fmt: skip
        if args.load_only:
            return
        measure(args, server, workdir, qv, truth, ftruth, bucket, done, restart_s, disk)


def measure(
    args: argparse.Namespace,
    server: Server,
    workdir: Path,
    qv: np.ndarray,
    truth: np.ndarray,
    ftruth: np.ndarray,
    bucket: int,
    done: dict[str, Any],
    restart_s: float,
    disk: float,
) -> None:
    """Raw FAISS on the server's snapshot against HTTP queries: 1 client, --clients, filtered."""
    assert server.proc is not None
    index, rows = snapshot_index(workdir / "data")
    ef = pick_ef(index, qv, truth, rows, args.floor)
    index.hnsw.efSearch = ef
    client = server.client(timeout=600)  # the restarted server listens on a new port
    say(f"efSearch {ef}: the smallest of {EF_STEPS} with raw recall@10 >= {args.floor}")
    faiss.omp_set_num_threads(1)  # one query per call on one thread, as the server
    reps = np.tile(np.arange(len(qv)), args.rounds)
    # the collection's own efSearch (64) needs no per-query knob: the lean search path
    knob = {} if ef == 64 else {"ef_search": ef}
    bodies = [orjson.dumps({"vector": qv[i].tolist(), "k": K, "budget_ms": 10_000,
                            **knob}) for i in reps]  # fmt: skip

    def raw(i: int) -> Any:
        return index.search(qv[reps[i] : reps[i] + 1], K)

    http = poster(client, "/v1/collections/vec/query", bodies)
    paired(raw, http, 100, 50)  # warm-up
    note = load_note()
    if args.profile:
        server.signal(signal.SIGUSR1)
    raw_lat, http_lat, raw_out, answers = paired(raw, http, len(reps), 100)
    if args.profile:
        server.signal(signal.SIGUSR2)
    raw_found = [rows[pos[0]].tolist() for _, pos in raw_out[: len(qv)]]
    http_found = [doc_rows(a) for a in answers[: len(qv)]]
    took_lat = took(answers)
    lat_c, answers_c, wall_c = http_load(server.url, "/v1/collections/vec/query", bodies,
                                         args.clients)  # fmt: skip
    fl_rows: list[list[object]] = []
    if args.filter_queries:
        fq = min(args.filter_queries, len(qv))
        fbodies = [orjson.dumps({"vector": qv[i % len(qv)].tolist(), "k": K, "budget_ms": 10_000,
                                 "filter": {"bucket": bucket}, **knob})
                   for i in range(fq)]  # fmt: skip
        started = time.perf_counter()
        answered(client, fbodies[0])  # the first filter on the key reads its column
        say(f"first filtered query (reads the key's column): {time.perf_counter() - started:.1f} s")
        http_load(server.url, "/v1/collections/vec/query", fbodies[:20], 1)  # warm-up
        lat_f, answers_f, _ = http_load(server.url, "/v1/collections/vec/query", fbodies, 1)
        fl_rows.append([
            "HTTP query, 10% filter, 1 client", fq, *percentiles(lat_f),
            *percentiles(took(answers_f)), fq / lat_f.sum(),
            recall_at_k([doc_rows(a) for a in answers_f], ftruth[:fq], K),
        ])  # fmt: skip
    say(f"server stages (embedstack_stage_seconds, mean ms over every query of the run): "
        f"{stage_means(client.get('/metrics').text)}")  # fmt: skip
    final_rss = rss_mib(server.proc.pid)
    stats = client.get("/v1/collections/vec/stats").json()
    say(f"server stats after the queries (knobs, online recall): {str(stats)[:1500]}")
    client.close()
    say(f"done. {load_note()}")
    n_req = len(reps)
    table(
        f"{args.n:,} x 384 HNSW (M=32, efConstruction={args.ef_construction}, efSearch={ef}), "
        f"k={K}; measured from: {note}",
        ["path", "requests", "p50 ms", "p95 ms", "p99 ms", "took p50 ms", "took p95 ms",
         "took p99 ms", "QPS", "recall@10"],
        [
            ["raw FAISS, the server's snapshot, in-process", n_req, *percentiles(raw_lat),
             "-", "-", "-", n_req / raw_lat.sum(), recall_at_k(raw_found, truth, K)],
            ["HTTP query, 1 keep-alive client", n_req, *percentiles(http_lat),
             *percentiles(took_lat), n_req / http_lat.sum(), recall_at_k(http_found, truth, K)],
            [f"HTTP query, {args.clients} concurrent clients", n_req, *percentiles(lat_c),
             *percentiles(took(answers_c)), n_req / wall_c,
             recall_at_k([doc_rows(a) for a in answers_c[: len(qv)]], truth, K)],
            *fl_rows,
        ],
    )  # fmt: skip
    say(
        f"load: {done['load_s']:.0f} s until served ({done['acked_s']:.0f} s acknowledged); "
        f"restart {restart_s:.1f} s; server RSS {final_rss:,.0f} MiB; data dir {disk:,.0f} MiB"
    )
    p99_http, p99_took, p99_raw = (percentiles(x)[2] for x in (http_lat, took_lat, raw_lat))
    say(f"[bold]RESULT HTTP p99 (1 client) = {p99_http:.2f} ms (target <= 10)[/]")
    say(f"[bold]RATIO server took_ms p50 / raw FAISS p50 = "
        f"{percentiles(took_lat)[0] / percentiles(raw_lat)[0]:.2f}, p99 / p99 = "
        f"{p99_took / p99_raw:.2f} (target <= 2)[/]")  # fmt: skip
    say(f"[bold]RATIO HTTP p99 / raw FAISS p99 = {p99_http / p99_raw:.2f}[/]")
    if fl_rows:
        say(f"[bold]RESULT filtered HTTP p99 (1 client) = {fl_rows[0][4]:.2f} ms, recall@10 "
            f"{fl_rows[0][-1]:.3f} (targets <= 10 ms, >= 0.95)[/]")  # fmt: skip
    say(f"load average at the end: {load_note()}; OMP threads for raw: 1; pid {os.getpid()}")


if __name__ == "__main__":
    main()
