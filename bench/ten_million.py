"""10M x 384 in ivf_pq with an SQ8 refine store on one node: load through HTTP, recall, latency,
resident memory against `embedstack plan`'s prediction, disk use, restart.

    python bench/ten_million.py --n 1000000      # the quick check first (minutes)
    python bench/ten_million.py                  # 10,000,000 (tens of minutes on 2 cores)

Vectors (never all in memory): pieces of --piece vectors, each made as bench/million.py makes
its vectors (`noisy_copies`: a cached real all-MiniLM-L6-v2 GCIDE embedding as seed, Gaussian
noise drawn from the seeds' own covariance scaled to a copy-to-seed cosine of about --copy-cos,
L2-normalized), piece p from seed --seed + p. The cache's last --queries entries are held out
as the queries. Each piece is posted to the bulk route as .npy multipart (--per-post vectors a
request, --clients requests in flight), and the exact top-10 of every query is merged piece by
piece (faiss.knn over the piece), so the truth streams with the load.

Then: wait until every job is done (indexed and served), query every held-out vector once
through HTTP (1 client; p50/p99 and recall@10 against the exact truth) at the collection's own
knobs, then once per setting of the per-query `params` sweep (--nprobes x --refine-factors,
cheapest first: nprobe, which decides how many PQ codes are scanned, then refine_factor, how
many candidates are re-scored) with recall@10 and latency for each; the cheapest setting whose
recall@10 reaches --floor is picked, as bench/million.py picks its efSearch. Stop the server (it
snapshots) and start it again (timed until it answers), query again, at the collection's knobs
and at the picked setting. Resident memory: the
server's peak (VmHWM) and its RSS after the load, after the queries and after the restart,
against `embedstack.index.planner.resident`'s prediction for the same index (printed with its
arithmetic). Disk: the data directory by part (store, its WAL, index snapshots).
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import httpx
import numpy as np
import orjson

from common import Server, load_note, machine_note, post, say, server_env, table, wait_jobs
from embedstack.index.gate import recall_at_k
from embedstack.index.planner import human_bytes, plan, resident
from million import du_mib, noisy_copies, restart_seconds, rss_mib
from query import cache_sizes, cached_vectors, percentiles

K = 10
DIM = 384


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=10_000_000, help="vectors (10,000,000)")
    p.add_argument("--piece", type=int, default=500_000, help="vectors made at a time (500,000)")
    p.add_argument("--queries", type=int, default=200, help="held-out real queries (200)")
    p.add_argument("--per-post", type=int, default=20_000, help="vectors per POST (20,000)")
    p.add_argument("--clients", type=int, default=2, help="POSTs in flight (2)")
    p.add_argument("--copy-cos", type=float, default=0.85, help="copy-to-seed cosine (0.85)")
    p.add_argument("--nlist", type=int, default=2048, help="IVF lists (2,048)")
    p.add_argument("--nprobe", type=int, default=128, help="lists probed (128)")
    p.add_argument("--refine-bits", type=int, default=8, help="refine store: 8 SQ8, 16, 32")
    # 16 gave recall@10 0.820 at 4.5M (the true top-10 were among the PQ stage's 160 candidates
    # 83% of the time, at any nprobe from 128 to 512); 64 gave 0.928 on the same index
    p.add_argument("--refine-factor", type=int, default=64, help="k x this re-scored (64)")
    p.add_argument("--nprobes", type=ints, default=(32, 64, 128, 256),
                   help="per-query nprobe values swept through HTTP (32,64,128,256)")  # fmt: skip
    p.add_argument("--refine-factors", type=ints, default=(16, 32, 64, 128, 256),
                   help="per-query refine_factor values swept (16,32,64,128,256)")  # fmt: skip
    p.add_argument("--floor", type=float, default=0.9, help="recall@10 to reach (0.9)")
    p.add_argument("--max-load-s", type=float, default=0.0,
                   help="stop making pieces after this many seconds of loading and measure what "
                   "was loaded (0: load all --n); the 10M projection is printed")  # fmt: skip
    p.add_argument("--workdir", type=Path, default=None, help="where the data dir goes (a tmp)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args()


def ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in text.split(",") if v.strip())


class Peak:
    """The server's RSS sampled every second (VmHWM gives the peak; this gives the trace)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.samples = pid, [(0.0, rss_mib(pid))]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.perf_counter()
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            try:
                self.samples.append((time.perf_counter() - self._started, rss_mib(self.pid)))
            except OSError:
                return

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return max(mib for _, mib in self.samples)


def status_mib(pid: int, field: str) -> float:
    """A memory field of /proc/PID/status (VmHWM: the peak RSS; RssAnon; RssFile) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def rss_parts(pid: int) -> str:
    return ", ".join(f"{f} {status_mib(pid, f):,.0f}" for f in ("RssAnon", "RssFile", "RssShmem"))


def post_npy(client: httpx.Client, part: np.ndarray, first: int) -> str:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(part, dtype=np.float32))
    meta = {"ids": [f"v{i}" for i in range(first, first + len(part))]}
    r = client.post(
        "/v1/collections/vec/vectors",
        files={"vectors": ("v.npy", buf.getvalue(), "application/x-npy")},
        data={"meta": orjson.dumps(meta).decode()},
    )
    if r.status_code >= 300:
        raise RuntimeError(f"POST vectors (npy) -> {r.status_code}: {r.text[:500]}")
    return str(r.json()["job_id"])


def merge_top(
    best: tuple[np.ndarray, np.ndarray], scores: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The running exact top-K (scores, global rows) merged with one piece's."""
    s = np.concatenate([best[0], scores], axis=1)
    r = np.concatenate([best[1], rows], axis=1)
    order = np.argsort(-s, axis=1, kind="stable")[:, :K]
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)


def load(
    server: Server, args: argparse.Namespace, seeds: np.ndarray, qv: np.ndarray
) -> tuple[np.ndarray, list[str], float, float]:
    """Post every piece; returns the exact top-K rows, the job ids, the seconds until the last
    POST was acknowledged and the seconds the exact search took (in this process)."""
    best = (np.full((len(qv), K), -np.inf, np.float32), np.full((len(qv), K), -1, np.int64))
    jobs: list[str] = []
    exact_s = 0.0
    started = time.perf_counter()
    clients = [server.client(timeout=1800) for _ in range(args.clients)]
    with ThreadPoolExecutor(args.clients) as pool:
        for p, start in enumerate(range(0, args.n, args.piece)):
            count = min(args.piece, args.n - start)
            base, cos = noisy_copies(seeds, count, args.copy_cos, args.seed + p)
            starts = range(0, count, args.per_post)
            futures = [
                pool.submit(post_npy, clients[i % args.clients], base[s : s + args.per_post],
                            start + s)
                for i, s in enumerate(starts)
            ]  # fmt: skip
            t = time.perf_counter()
            scores, rows = faiss.knn(qv, base, K, metric=faiss.METRIC_INNER_PRODUCT)
            best = merge_top(best, scores, rows + start)
            exact_s += time.perf_counter() - t
            jobs += [f.result() for f in futures]
            done = start + count
            args.loaded = done
            rate = done / (time.perf_counter() - started)
            say(f"piece {p}: {done:,} acknowledged ({rate:,.0f}/s), copy cos {cos:.3f}; server "
                f"RSS {rss_mib(server.proc.pid):,.0f} MiB; {load_note()}")  # fmt: skip
            if args.max_load_s and time.perf_counter() - started > args.max_load_s:
                say(f"stopping at {done:,} vectors: --max-load-s {args.max_load_s:,.0f} passed")
                break
    for c in clients:
        c.close()
    return best[1], jobs, time.perf_counter() - started, exact_s


def query_all(
    client: httpx.Client, qv: np.ndarray, params: dict[str, int] | None = None
) -> tuple[np.ndarray, list[list[int]]]:
    """Every query once through HTTP (`params`: per-query index knobs; None: the index's)."""
    lat, found = [], []
    knobs = {"params": params} if params else {}
    for q in qv:
        body = orjson.dumps({"vector": q.tolist(), "k": K, "budget_ms": 60_000, **knobs})
        t = time.perf_counter()
        r = client.post("/v1/collections/vec/query", content=body,
                        headers={"content-type": "application/json"})  # fmt: skip
        lat.append(time.perf_counter() - t)
        if r.status_code != 200:
            raise RuntimeError(f"query -> {r.status_code}: {r.text[:300]}")
        found.append([int(h["document_id"][1:]) for h in orjson.loads(r.content)["hits"][:K]])
    return np.array(lat), found


def sweep(
    client: httpx.Client, qv: np.ndarray, truth: np.ndarray, args: argparse.Namespace
) -> tuple[dict[str, int] | None, list[list[object]]]:
    """Recall@10 and HTTP latency of every (nprobe, refine_factor) of the sweep, sent as the
    query's `params`, cheapest first; the first reaching --floor (None if none does)."""
    picked: dict[str, int] | None = None
    rows: list[list[object]] = []
    for nprobe in sorted(args.nprobes):
        for factor in sorted(args.refine_factors):
            params = {"nprobe": min(nprobe, args.nlist), "refine_factor": factor}
            query_all(client, qv[:10], params)  # warm the setting's search parameters
            lat, found = query_all(client, qv, params)
            recall = recall_at_k(found, truth, K)
            p50, _, p99 = percentiles(lat)
            reached = recall >= args.floor
            if reached and picked is None:
                picked = params
            rows.append([f"nprobe={params['nprobe']} refine_factor={factor}", f"{recall:.3f}",
                         f"{p50:.2f}", f"{p99:.2f}", f"{len(qv) / lat.sum():,.1f}",
                         "PICKED" if picked is params else ("yes" if reached else "")])  # fmt: skip
            say(f"params {params}: recall@10 {recall:.3f}, HTTP p50 {p50:.2f} ms, p99 "
                f"{p99:.2f} ms; {load_note()}")  # fmt: skip
    reaching = [r for r in rows if r[-1]]
    if reaching:  # measured, so under load it may differ from the cost order
        fastest = min(reaching, key=lambda r: float(str(r[2])))
        say(f"fastest measured p50 reaching {args.floor}: {fastest[0]} ({fastest[2]} ms)")
    return picked, rows


def disk_parts(data: Path) -> dict[str, float]:
    parts = {
        "store.db": sum(p.stat().st_size for p in data.glob("store.db")) / 2**20,
        "store.db-wal": sum(p.stat().st_size for p in data.glob("store.db-wal")) / 2**20,
        "indexes": du_mib(data / "indexes") if (data / "indexes").exists() else 0.0,
    }
    parts["all"] = du_mib(data)
    return parts


def main() -> None:
    args = parse_args()
    say(f"bench/ten_million.py {' '.join(sys.argv[1:])}\n{machine_note()}\n{load_note()}")
    have = max(cache_sizes(), default=0)
    if have <= args.queries:
        raise SystemExit("no GCIDE vector cache: python bench/gcide_vectors.py 6200")
    real, _ = cached_vectors(have)
    seeds, qv = real[: -args.queries], np.ascontiguousarray(real[-args.queries :])
    say(f"{len(seeds):,} real GCIDE MiniLM seeds, {len(qv)} held-out real queries")
    index = {"type": "ivf_pq", "nlist": args.nlist, "nprobe": args.nprobe,
             "refine_bits": args.refine_bits, "refine_factor": args.refine_factor,
             "retrain_growth": 0}  # fmt: skip
    params = {k: v for k, v in index.items() if k != "type"}
    workdir = Path(tempfile.mkdtemp(prefix="embedstack-10m-", dir=args.workdir))
    data = workdir / "data"
    server = Server(workdir, server_env())
    try:
        server.start(timeout=600)
        idle = rss_mib(server.proc.pid)
        with server.client(timeout=600) as client:
            post(client, "/v1/collections", {"name": "vec", "dim": DIM, "metric": "cosine",
                                             "lexical": False, "index": index})  # fmt: skip
            base_rss = rss_mib(server.proc.pid)
            say(f"server RSS idle {idle:,.0f} MiB, with the empty collection {base_rss:,.0f} MiB")
            peak = Peak(server.proc.pid)
            started = time.perf_counter()
            truth, jobs, acked, exact_s = load(server, args, seeds, qv)
            args.n = args.loaded  # what was loaded (all of --n unless --max-load-s stopped it)
            wait_jobs(client, jobs, timeout=4 * 3600, poll=1.0)
            load_s = time.perf_counter() - started
            sampled_peak = peak.stop()
            served = client.get("/v1/collections/vec").json().get("vectors")
            stats = client.get("/v1/collections/vec/stats").json()
            after_load = rss_mib(server.proc.pid)
            say(
                f"loaded {served:,}: acknowledged after {acked:,.0f} s, indexed and served after "
                f"{load_s:,.0f} s ({args.n / load_s:,.0f} vectors/s; exact search in this "
                f"process took {exact_s:,.0f} s of it); RSS {after_load:,.0f} MiB; {load_note()}"
            )
            say(f"index stats: {str(stats)[:1200]}")
            lat, found = query_all(client, qv)
            recall = recall_at_k(found, truth, K)
            say(f"at the collection's knobs: recall@10 {recall:.3f}; sweeping per-query params")
            picked, swept = sweep(client, qv, truth, args)
            after_queries = rss_mib(server.proc.pid)
        hwm = max(status_mib(server.proc.pid, "VmHWM"), sampled_peak)
        say(f"after the queries: {rss_parts(server.proc.pid)} MiB")
        disk = disk_parts(data)
        probe = orjson.dumps({"vector": qv[0].tolist(), "k": K, "budget_ms": 60_000})
        restart_s = restart_seconds(server, probe)
        with server.client(timeout=600) as client:
            lat2, found2 = query_all(client, qv)
            if picked is not None:
                lat3, found3 = query_all(client, qv, picked)
        after_restart = rss_mib(server.proc.pid)
        say(f"after the restart and the queries: {rss_parts(server.proc.pid)} MiB")
        recall2 = recall_at_k(found2, truth, K)
        disk2 = disk_parts(data)
    finally:
        server.stop(grace=1800)
    planned = plan(args.n, DIM, "ivf_pq", params, node_ram_bytes=24 * 2**30, metric="cosine")
    parts = resident(planned, store_bytes=int(disk2["store.db"] * 2**20))
    predicted = sum(b for _, b in parts) / 2**20
    say("embedstack plan's resident prediction (index.planner.resident):")
    for what, size in parts:
        say(f"  {what}: {human_bytes(size)}")
    say(f"  = {predicted:,.0f} MiB")
    table(
        f"per-query params through HTTP (1 client, {len(qv)} queries each, cheapest first; "
        f"floor {args.floor}); collection's own: nprobe={args.nprobe} "
        f"refine_factor={args.refine_factor}",
        ["params", "recall@10", "p50 ms", "p99 ms", "QPS", f">= {args.floor}"],
        swept,
    )
    at_picked: list[list[str]] = []
    if picked is not None:
        at_picked = [
            [f"recall@10 at the picked params {picked} after restart",
             f"{recall_at_k(found3, truth, K):.3f}"],
            ["HTTP p50 / p99 ms at the picked params after restart",
             "{:.2f} / {:.2f}".format(*percentiles(lat3)[::2])],
        ]  # fmt: skip
    table(
        f"{args.n:,} x {DIM} ivf_pq nlist={args.nlist} refine SQ{args.refine_bits} "
        f"x{args.refine_factor}, k={K}; {load_note()}",
        ["measure", "value"],
        [
            ["load: acknowledged s", f"{acked:,.0f}"],
            ["load: indexed and served s", f"{load_s:,.0f}"],
            ["load rate vectors/s", f"{args.n / load_s:,.0f}"],
            ["projected 10M load min at this rate", f"{1e7 / (args.n / load_s) / 60:,.0f}"],
            ["recall@10 (HTTP, vs exact), the collection's knobs", f"{recall:.3f}"],
            ["recall@10 after restart", f"{recall2:.3f}"],
            ["picked per-query params (cheapest reaching the floor)", str(picked)],
            *at_picked,
            ["HTTP p50 / p99 ms", "{:.2f} / {:.2f}".format(*percentiles(lat)[::2])],
            ["HTTP p50 / p99 ms after restart", "{:.2f} / {:.2f}".format(*percentiles(lat2)[::2])],
            ["restart until first answer s", f"{restart_s:,.1f}"],
            ["RSS peak MiB (VmHWM)", f"{hwm:,.0f}"],
            ["RSS after load / queries / restart MiB",
             f"{after_load:,.0f} / {after_queries:,.0f} / {after_restart:,.0f}"],
            ["plan's predicted RSS MiB", f"{predicted:,.0f}"],
            ["RATIO steady RSS (after restart) / predicted", f"{after_restart / predicted:.3f}"],
            ["RATIO RSS after queries / predicted", f"{after_queries / predicted:.3f}"],
            ["RATIO peak RSS / predicted", f"{hwm / predicted:.3f}"],
            ["data dir MiB (store / wal / indexes)",
             f"{disk2['all']:,.0f} ({disk2['store.db']:,.0f} / {disk2['store.db-wal']:,.0f} / "
             f"{disk2['indexes']:,.0f})"],
            ["data dir MiB before restart", f"{disk['all']:,.0f}"],
            ["store bytes per vector", f"{disk2['store.db'] * 2**20 / args.n:,.0f}"],
        ],
    )  # fmt: skip
    say(f"data dir {data} (delete it when done); load average at the end: {load_note()}")


if __name__ == "__main__":
    main()
