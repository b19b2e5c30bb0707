"""Vector queries on the user's path: embedstack's server against chromadb's own server, side by
side in one run (same vectors, same HTTP client loop, same concurrency).

    python bench/peer_query.py                      # the cached GCIDE vectors, 2 client threads
    python bench/peer_query.py --n 28000 --concurrency 1,2,4

Peer: chromadb 1.5.9 (`chroma run --path DIR --host 127.0.0.1 --port P`), installed once into
its own venv under ~/.cache/embedstack/peers/chromadb (bench/index_runs.py ensure_venv; it pulls
no torch). Vectors: all-MiniLM-L6-v2 embeddings of distinct GCIDE entries (bench/query.py's
cache); the last --queries are held out as queries. Both systems get an HNSW index with M=32,
efConstruction=200, efSearch=64 over cosine, and the same short text per vector, loaded the way
each one's own client loads (embedstack: POST /v1/collections/{name}/vectors, base64 float32,
10,000 per request; chroma: POST .../add with base64 vectors, its max batch size per request),
timed until the index serves every vector. Queries: one vector per request, k=10, text and
score returned by both (chroma: include documents + distances), from N keep-alive httpx clients
(threads) sharing one work list, the two systems alternating per round so both see the same
machine load. recall@10 is against exact search; a system under the 0.95 floor gets a higher
efSearch (chroma: a new collection built with it; embedstack: the per-query ef_search) before
it is timed, so speed is compared at equal recall.
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

from byo import upload_b64
from common import (
    Server,
    load_note,
    machine_note,
    post,
    say,
    server_env,
    table,
    wait_jobs,
)
from embedstack.index.gate import recall_at_k
from embedstack.testing import free_port, stop_process, wait_until
from index_runs import ensure_venv
from query import cached_vectors, exact_top, http_load, percentiles

HNSW = {"type": "hnsw", "M": 32, "ef_construction": 200, "ef_search": 64}
CHROMA_DB = "/api/v2/tenants/default_tenant/databases/default_database"
FLOOR = 0.95
EF_STEPS = (64, 96, 128, 192, 256)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=None, help="vectors (default: all cached but queries)")
    p.add_argument("--queries", type=int, default=500, help="held-out query vectors (500)")
    p.add_argument("--k", type=int, default=10, help="neighbours per query (10)")
    p.add_argument("--concurrency", default="2", help="client thread counts, comma-separated (2)")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds per level (3)")
    return p.parse_args()


class ChromaServer:
    """`chroma run` from its venv on a free loopback port, data in `folder`."""

    def __init__(self, chroma: Path, folder: Path) -> None:
        self.chroma, self.folder = chroma, folder
        self.port = free_port()
        self.log = folder / "chroma.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ChromaServer:
        cmd = [str(self.chroma), "run", "--path", str(self.folder / "db"), "--host", "127.0.0.1",
               "--port", str(self.port)]  # fmt: skip
        env = {**os.environ, "ANONYMIZED_TELEMETRY": "False", "RUST_LOG": "error"}
        self.proc = subprocess.Popen(
            cmd, stdout=self.log.open("wb"), stderr=subprocess.STDOUT, env=env
        )
        wait_until(self.proc, self._ready, 120, self.log, "chroma")
        return self

    def _ready(self) -> bool:
        return httpx.get(f"{self.url}/api/v2/heartbeat", timeout=2).status_code == 200

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            stop_process(self.proc, 30, False)


def chroma_call(client: httpx.Client, method: str, path: str, body: Any = None) -> Any:
    content = None if body is None else orjson.dumps(body)
    r = client.request(method, path, content=content, headers={"content-type": "application/json"})
    if r.status_code >= 300:
        raise RuntimeError(f"chroma {method} {path} -> {r.status_code}: {r.text[:500]}")
    return orjson.loads(r.content) if r.content else None


def load_chroma(
    client: httpx.Client, name: str, base: np.ndarray, texts: list[str], ef: int
) -> tuple[str, float]:
    """A chroma collection of `base` (efSearch `ef`); (its id, seconds until it serves all)."""
    started = time.perf_counter()
    hnsw = {"space": "cosine", "max_neighbors": HNSW["M"],
            "ef_construction": HNSW["ef_construction"], "ef_search": ef}  # fmt: skip
    made = chroma_call(client, "POST", f"{CHROMA_DB}/collections", {
        "name": name, "configuration": {"hnsw": hnsw, "embedding_function": {"type": "legacy"}},
    })  # fmt: skip
    cid = made["id"]
    step = int(chroma_call(client, "GET", "/api/v2/pre-flight-checks")["max_batch_size"])
    little = base.astype("<f4")
    for start in range(0, len(base), step):
        stop = min(start + step, len(base))
        chroma_call(client, "POST", f"{CHROMA_DB}/collections/{cid}/add", {
            "ids": [f"v{i}" for i in range(start, stop)],
            "embeddings": [base64.b64encode(little[i].tobytes()).decode()
                           for i in range(start, stop)],
            "documents": texts[start:stop], "metadatas": None, "uris": None,
        })  # fmt: skip
    # served: a query over the whole collection answers, and chroma has indexed its whole log
    # (it indexes on its own after each add; queries meanwhile also scan the unindexed part)
    query = {"query_embeddings": [base[0].tolist()], "n_results": 1, "include": []}
    chroma_call(client, "POST", f"{CHROMA_DB}/collections/{cid}/query", query)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        r = client.get(f"{CHROMA_DB}/collections/{cid}/indexing_status")
        if r.status_code != 200 or orjson.loads(r.content).get("num_unindexed_ops", 0) == 0:
            break  # no such status here (older servers), or nothing left to index
        time.sleep(0.1)
    count = chroma_call(client, "GET", f"{CHROMA_DB}/collections/{cid}/count")
    if count != len(base):
        raise RuntimeError(f"chroma holds {count} vectors, not {len(base)}")
    return cid, time.perf_counter() - started


def load_ours(client: httpx.Client, name: str, base: np.ndarray, texts: list[str]) -> float:
    started = time.perf_counter()
    post(client, "/v1/collections", {"name": name, "dim": base.shape[1], "metric": "cosine",
                                     "index": HNSW})  # fmt: skip
    wait_jobs(client, upload_b64(client, name, base, texts, 10_000), timeout=3600)
    served = client.get(f"/v1/collections/{name}").json().get("vectors")
    if served != len(base):
        raise RuntimeError(f"embedstack serves {served} vectors, not {len(base)}")
    return time.perf_counter() - started


class System:
    """One server under test: its query path, request bodies and answer parser."""

    def __init__(
        self, name: str, url: str, path: str, bodies: list[bytes], rows: Callable[[bytes], Any]
    ) -> None:
        self.name, self.url, self.path, self.bodies, self.rows = name, url, path, bodies, rows
        self.lat: list[np.ndarray] = []
        self.wall = 0.0
        self.done = 0
        self.answers: list[bytes] = []

    def run(self, clients: int) -> None:
        lat, answers, wall = http_load(self.url, self.path, self.bodies, clients)
        self.lat.append(lat)
        self.wall += wall
        self.done += len(self.bodies)
        self.answers = answers

    def recall(self, truth: np.ndarray, k: int) -> float:
        return recall_at_k([self.rows(a)[:k] for a in self.answers], truth, k)


def ours_rows(answer: bytes) -> list[int]:
    return [int(h["document_id"][1:]) for h in orjson.loads(answer)["hits"]]


def chroma_rows(answer: bytes) -> list[int]:
    return [int(i[1:]) for i in orjson.loads(answer)["ids"][0]]


def ours_system(url: str, qv: np.ndarray, k: int, ef: int | None) -> System:
    extra = {} if ef is None else {"ef_search": ef}
    bodies = [orjson.dumps({"vector": q.tolist(), "k": k, "budget_ms": 10_000, **extra})
              for q in qv]  # fmt: skip
    return System("embedstack", url, "/v1/collections/vec/query", bodies, ours_rows)


def chroma_system(url: str, cid: str, qv: np.ndarray, k: int) -> System:
    bodies = [orjson.dumps({"query_embeddings": [q.tolist()], "n_results": k,
                            "include": ["documents", "distances"]}) for q in qv]  # fmt: skip
    return System("chromadb", url, f"{CHROMA_DB}/collections/{cid}/query", bodies, chroma_rows)


def main() -> None:
    args = parse_args()
    say(f"bench/peer_query.py {' '.join(sys.argv[1:])}\n{machine_note()}\n{load_note()}")
    chroma_python = ensure_venv("chromadb", lambda m: say(m))
    chroma = chroma_python.parent / "chroma"
    import query

    n = args.n or max(query.cache_sizes()) - args.queries
    vecs, texts = cached_vectors(n + args.queries)
    base, qv = vecs[:n], vecs[n:]
    short = [" ".join(t.split()[:8]) for t in texts[:n]]
    truth = exact_top(base, qv, args.k)
    levels = [int(c) for c in args.concurrency.split(",") if c.strip()]
    say(f"{n:,} GCIDE vectors (384-d all-MiniLM-L6-v2) + {len(qv)} held-out queries")
    with (
        tempfile.TemporaryDirectory(prefix="embedstack-peer-") as tmp,
        Server(Path(tmp), server_env()) as ours,
        ChromaServer(chroma, Path(tmp)) as peer,
        ours.client(timeout=600) as oc,
        httpx.Client(base_url=peer.url, timeout=600) as cc,
    ):
        say(f"loading both ... {load_note()}")
        ours_s = load_ours(oc, "vec", base, short)
        ef, (cid, chroma_s) = HNSW["ef_search"], load_chroma(cc, "vec64", base, short, 64)
        say(f"loaded: embedstack {ours_s:.1f} s, chroma {chroma_s:.1f} s ... {load_note()}")
        mine = ours_system(ours.url, qv, args.k, None)
        mine.run(1)
        our_ef = None
        for step in EF_STEPS[1:]:
            if mine.recall(truth, args.k) >= FLOOR:
                break
            our_ef = step
            mine = ours_system(ours.url, qv, args.k, our_ef)
            mine.run(1)
        theirs = chroma_system(peer.url, cid, qv, args.k)
        theirs.run(1)
        for step in EF_STEPS[1:]:
            if theirs.recall(truth, args.k) >= FLOOR:
                break
            say(
                f"chroma recall {theirs.recall(truth, args.k):.3f} at ef {ef}: rebuilding at {step}"
            )
            ef, (cid, _) = step, load_chroma(cc, f"vec{step}", base, short, step)
            theirs = chroma_system(peer.url, cid, qv, args.k)
            theirs.run(1)
        rows: list[list[object]] = []
        ratios = []
        for c in levels:
            runs = (
                ours_system(ours.url, qv, args.k, our_ef),
                chroma_system(peer.url, cid, qv, args.k),
            )
            note = load_note()
            for _ in range(args.rounds):
                for system in runs:
                    system.run(c)
            for system in runs:
                lat = np.concatenate(system.lat)
                qps = system.done / system.wall
                knob = (our_ef or HNSW["ef_search"]) if system is runs[0] else ef
                rows.append([system.name, c, knob, system.done, *percentiles(lat), qps,
                             system.recall(truth, args.k), note])  # fmt: skip
            p99 = [percentiles(np.concatenate(s.lat))[2] for s in runs]
            qps = [s.done / s.wall for s in runs]
            ratios.append((c, qps[0] / qps[1], p99[0] / p99[1]))
    say(f"done. {load_note()}")
    table(
        f"Vector queries over HTTP, k={args.k}, {n:,} x 384 (HNSW M=32, efConstruction=200); "
        f"load until served: embedstack {ours_s:.1f} s, chromadb {chroma_s:.1f} s",
        ["server", "clients", "efSearch", "requests", "p50 ms", "p95 ms", "p99 ms", "QPS",
         "recall@10", "load before"],
        rows,
    )  # fmt: skip
    say(f"[bold]RATIO load until served embedstack / chromadb = {ours_s / chroma_s:.2f}[/]")
    for c, qps_ratio, p99_ratio in ratios:
        say(f"[bold]RATIO at {c} clients: QPS embedstack / chromadb = {qps_ratio:.2f} (target > 1)"
            f", p99 embedstack / chromadb = {p99_ratio:.2f} (target < 1)[/]")  # fmt: skip


if __name__ == "__main__":
    main()
