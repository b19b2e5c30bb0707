"""Ingest throughput through the whole write path, against the same engine in process.

Part 1, the bundled model: documents go in as POST /v1/collections/{name}/documents batches, then
durable queue -> worker -> chunking -> batcher -> model -> store -> index, timed until every job
reports "done" (GET /v1/jobs/{id}, which waits for the serving index). Baselines in the same run,
on the very chunks the collection makes (same tokenizer, same ChunkingSpec), alternating with the
server slice by slice (--rounds) so that all see the same machine load:
- the engine the server picks, in this process (bench/inprocess.py): built by the project's own
  factory from the server's settings (the auto backend, its threads), fed through the server's
  batcher in the groups a server worker submits. RATIO pipeline wall / engine in-process: what
  the write path adds over the model (target <= 1.10).
- plain `SentenceTransformer(...).encode(chunk_texts, batch_size=32)`. RATIO = our chunks/s /
  plain chunks/s.

Part 2, the pipeline's own ceiling: the same write path with the hashing test embedder (almost
free), sized to run >= --hash-seconds. Target: >= 20,000 chunks/s, so the model stays the
bottleneck. --profile runs that part under a CPU-time profiler (the server's event loop and
thread pools).
"""

from __future__ import annotations

import argparse
import itertools
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from common import (
    PYDOC_JSONL,
    THREADS_HELP,
    Server,
    batched,
    cpu_seconds,
    load_note,
    post,
    preflight,
    pydoc_docs,
    say,
    server_env,
    table,
    unique_gcide,
    use_torch_threads,
    wait_jobs,
)
from embedstack.types import ChunkingSpec
from inprocess import Engine

CHUNKING = {"mode": "tokens", "size": 256, "overlap": 32}
HASH_MODEL = "hashing-test"
CALIBRATION_DOCS = 5000


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--corpus",
        choices=("gcide", "pydoc"),
        default="gcide",
        help="gcide: distinct GCIDE dictionary entries in dictionary order (default); "
        "pydoc: the 213 python3.11-doc sections of tests/data/pydoc_sections.jsonl",
    )
    p.add_argument(
        "--docs",
        type=int,
        default=2000,
        help="documents for the model run (default 2000 GCIDE entries, ~2,600 chunks: on 2 "
        "loaded cores about 100 s for the server, as long for the engine in process, 3x that "
        "for plain sentence-transformers)",
    )
    p.add_argument("--batch", type=int, default=500, help="documents per POST (default 500)")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="the model run alternates baseline and server over this many slices of "
        "the documents, so both see the same machine load (default 3)",
    )
    p.add_argument(
        "--hash-seconds",
        type=float,
        default=10.0,
        help="the hashing-embedder run is sized from a calibration run to last at "
        "least this long (default 10)",
    )
    p.add_argument(
        "--hash-max-docs",
        type=int,
        default=400_000,
        help="cap on documents for the hashing run (default 400,000)",
    )
    p.add_argument(
        "--target",
        type=float,
        default=20_000.0,
        help="pipeline ceiling target in chunks/s (default 20,000)",
    )
    p.add_argument(
        "--hash-index",
        default="",
        help="index type of the hashing run's collection (default: the server's choice, HNSW); "
        "e.g. flat, to see the pipeline's ceiling without HNSW inserts",
    )
    p.add_argument("--skip-model", action="store_true", help="only run the hashing ceiling")
    p.add_argument("--skip-hash", action="store_true", help="only run the model comparison")
    p.add_argument(
        "--profile",
        type=Path,
        metavar="OUT.prof",
        default=None,
        help="profile the server (CPU time of its event loop and thread-pool work: not the model "
        "runner thread) during the measured hashing run, writing OUT.prof, and during part 1's "
        "rounds, writing OUT-model.prof; print the top functions (the profiler slows the "
        "server's Python: a profiled run's ratios are not the benchmark's)",
    )
    p.add_argument(
        "--poll",
        type=float,
        default=0.05,
        help="part 1: seconds between the client's GET /v1/jobs/{id} while it waits (default "
        "0.05); the client and the server's answers share the 2 cores with the model, a longer "
        "poll costs at most that much wall per round",
    )
    p.add_argument("--torch-threads", type=int, default=0, help=THREADS_HELP)
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="the server's in-process ingest workers (default 0: its default, 1)",
    )
    p.add_argument(
        "--batch-documents",
        type=int,
        default=0,
        help="documents a worker chunks, embeds and stores together (default 0: the server's "
        "ingest_batch_documents)",
    )
    return p.parse_args()


def workers(args: argparse.Namespace) -> dict[str, str]:
    """The server settings the worker options ask for."""
    env = {"EMBEDSTACK_WORKERS": str(args.workers)} if args.workers > 0 else {}
    if args.batch_documents > 0:
        env["EMBEDSTACK_INGEST_BATCH_DOCUMENTS"] = str(args.batch_documents)
    return env


def load_docs(corpus: str, n: int) -> list[tuple[str, str]]:
    rows = unique_gcide(n) if corpus == "gcide" else pydoc_docs(n)
    return [(f"{corpus}-{i}", text) for i, (_, text) in enumerate(rows)]


def split(items: list[Any], parts: int) -> list[list[Any]]:
    """`items` in `parts` contiguous slices of near-equal size."""
    bounds = [len(items) * i // parts for i in range(parts + 1)]
    return [items[lo:hi] for lo, hi in itertools.pairwise(bounds)]


def bodies(docs: list[tuple[str, str]], batch: int) -> list[bytes]:
    """Request bodies encoded up front, so the timed loop spends no client time on JSON."""
    return [
        orjson.dumps({"documents": [{"id": i, "text": t} for i, t in part]})
        for part in batched(docs, batch)
    ]


def write_path(
    client: httpx.Client, collection: str, payloads: list[bytes], poll: float = 0.05
) -> dict[str, Any]:
    """POST every batch, wait for every job (asking every `poll` seconds); seconds from the
    first POST to the last "done"."""
    started = time.perf_counter()
    jobs = [post(client, f"/v1/collections/{collection}/documents", b)["job_id"] for b in payloads]
    done = wait_jobs(client, jobs, poll=poll)
    seconds = time.perf_counter() - started
    totals = [j["result"] or {} for j in done]
    return {
        "seconds": seconds,
        "documents": sum(int(t.get("documents", 0)) for t in totals),
        "embedded": sum(int(t.get("chunks_embedded", 0)) for t in totals),
        "reused": sum(int(t.get("chunks_reused", 0)) for t in totals),
    }


def metric_sum(client: httpx.Client, name: str, label: str) -> float:
    """Sum of a Prometheus sample `name` over the series whose labels contain `label`."""
    total = 0.0
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def stage_seconds(client: httpx.Client, stage: str) -> float:
    """Seconds the server spent in a batcher stage of the bulk lane (embedstack_stage_seconds)."""
    return metric_sum(client, "embedstack_stage_seconds_sum", f'route="bulk",stage="{stage}"')


def served_backend(client: httpx.Client, model: str) -> str:
    """The engine the server runs `model` on (its embedstack_model_engine_info series)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("embedstack_model_engine_info{") and f'model="{model}"' in line:
            return line.split('backend="', 1)[1].split('"', 1)[0]
    return "not exported"


def model_seconds(client: httpx.Client) -> float:
    """The bundled model's forward time so far, from the server's Prometheus metrics."""
    return metric_sum(client, "embedstack_inference_duration_seconds_sum", "MiniLM")


def create(client: httpx.Client, name: str, model: str, index: str = "") -> None:
    body: dict[str, Any] = {"name": name, "model": model, "chunking": CHUNKING}
    if index:
        body["index"] = {"type": index}
    post(client, "/v1/collections", body)


def model_run(args: argparse.Namespace, workdir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    from embedstack.inference.models.bundled import L6

    say(f"[bold]Part 1: bundled all-MiniLM-L6-v2[/] ({args.corpus}, {args.docs} documents)")
    docs = load_docs(args.corpus, args.docs)
    env = server_env(**use_torch_threads(args.torch_threads), **workers(args))
    engine = Engine.like_server(env)  # the server's settings, registry and auto backend
    started = time.perf_counter()
    seen: set[str] = set()
    spec = ChunkingSpec(**CHUNKING)  # type: ignore[arg-type]
    rounds = [engine.worker_groups(part, spec, args.batch, seen)
              for part in split(docs, args.rounds)]  # fmt: skip
    chunks = [t for groups in rounds for texts in groups for t in texts]
    say(f"{len(docs)} documents -> {len(chunks)} distinct chunks "
        f"(chunked in {time.perf_counter() - started:.1f} s)")  # fmt: skip
    plain = SentenceTransformer(str(L6.folder()), device="cpu")
    plain.encode(chunks[:32], batch_size=32)  # warm-up, not timed
    engine.seconds([chunks[:64]])  # warm-up, not timed
    plain_s = engine_s = engine_fwd = ours_s = 0.0
    embedded = reused = 0
    profile = None if args.profile is None else args.profile.with_stem(args.profile.stem + "-model")
    server_cpu = engine_cpu = 0.0
    with Server(workdir / "model", env, profile) as server, server.client() as client:
        assert server.proc is not None
        create(client, "warmup", "all-MiniLM-L6-v2")
        warm = post(client, "/v1/collections/warmup/documents", bodies(docs[:8], 8)[0])
        wait_jobs(client, [warm["job_id"]])
        create(client, "bench", "all-MiniLM-L6-v2")
        served_by = served_backend(client, "all-MiniLM-L6-v2")
        before = model_seconds(client)
        tokenize_before = stage_seconds(client, "tokenize")
        if profile is not None:
            server.signal(signal.SIGUSR1)
        # alternate the three round by round, so all see the same machine load
        for r, (part, groups) in enumerate(zip(split(docs, args.rounds), rounds, strict=True)):
            texts = [t for g in groups for t in g]
            say(f"round {r + 1}/{args.rounds}: {len(texts)} chunks ... {load_note()}")
            started = time.perf_counter()
            plain.encode(texts, batch_size=32)
            plain_s += time.perf_counter() - started
            wall, forward, cpu = engine.seconds(groups)
            engine_s, engine_fwd, engine_cpu = (
                engine_s + wall,
                engine_fwd + forward,
                engine_cpu + cpu,
            )
            cpu = cpu_seconds(server.proc.pid)
            ours = write_path(client, "bench", bodies(part, args.batch), args.poll)
            server_cpu += cpu_seconds(server.proc.pid) - cpu
            ours_s += ours["seconds"]
            embedded, reused = embedded + ours["embedded"], reused + ours["reused"]
        if profile is not None:
            server.signal(signal.SIGUSR2)
        model_s = model_seconds(client) - before
        tokenize_s = stage_seconds(client, "tokenize") - tokenize_before
    engine.close()
    say(f"done. {load_note()}")
    n_chunks = embedded + reused
    table(
        "Write path with the bundled model vs the same engine in process, and plain "
        "sentence-transformers (same chunks)",
        ["path", "documents", "chunks", "seconds", "docs/s", "chunks/s", "model forward s"],
        [
            ["plain ST encode(batch_size=32)", len(docs), len(chunks), plain_s,
             len(docs) / plain_s, len(chunks) / plain_s, "-"],
            [f"engine in process ({engine.embedder.backend}, the server's batcher and groups)",
             len(docs), len(chunks), engine_s, len(docs) / engine_s, len(chunks) / engine_s,
             engine_fwd],
            [f"embedstack HTTP -> queue -> ... -> index ({served_by})", len(docs), n_chunks,
             ours_s, len(docs) / ours_s, n_chunks / ours_s, model_s],
        ],
    )  # fmt: skip
    say(
        f"embedstack: {embedded} chunks embedded, {reused} reused; model forward time "
        f"{model_s:.1f} s = {100 * model_s / ours_s:.0f}% of its wall time (in process: "
        f"{engine_fwd:.1f} s = {100 * engine_fwd / engine_s:.0f}%)"
    )
    say(
        f"CPU: server {server_cpu:.1f} s ({server_cpu / ours_s:.2f} cores), engine in process "
        f"{engine_cpu:.1f} s ({engine_cpu / engine_s:.2f} cores): the write path used "
        f"{server_cpu - engine_cpu:+.1f} s more; the server's batcher tokenized for "
        f"{tokenize_s:.2f} s (off the model's thread)"
    )
    if n_chunks != len(chunks):
        say(f"[bold red]the server made {n_chunks} chunks, the baselines {len(chunks)}[/]")
    ratio = (n_chunks / ours_s) / (len(chunks) / plain_s)
    say(f"[bold]RATIO ingest chunks/s embedstack / plain encode = {ratio:.2f}[/]")
    say(
        f"[bold]RATIO pipeline wall / engine in-process = {ours_s / engine_s:.2f} "
        f"(target <= 1.10)[/]; {load_note()}"
    )
    if profile is not None:
        print_profile(profile, "part 1's rounds (profiled: the server ran slower)")


def hash_docs(base: list[tuple[str, str]], n: int, tag: str) -> list[tuple[str, str]]:
    """`n` documents with distinct texts, cycling through `base` with a numbered suffix."""
    out = []
    for i in range(n):
        _, text = base[i % len(base)]
        out.append((f"{tag}-{i}", f"{text} [{tag} {i // len(base)}]"))
    return out


def hash_run(args: argparse.Namespace, workdir: Path) -> None:
    say(f"\n[bold]Part 2: pipeline ceiling with the {HASH_MODEL} embedder[/]")
    base = load_docs(args.corpus, 200_000)
    env = server_env(EMBEDSTACK_ENABLE_TEST_MODELS="1", **workers(args))
    with Server(workdir / "hash", env, args.profile) as server, server.client() as client:
        create(client, "calibrate", HASH_MODEL, args.hash_index)
        cal = write_path(client, "calibrate", bodies(hash_docs(base, CALIBRATION_DOCS, "c"), 1000))
        rate = cal["documents"] / cal["seconds"]
        n = min(args.hash_max_docs, max(CALIBRATION_DOCS, int(rate * args.hash_seconds * 1.2)))
        say(f"calibration: {rate:,.0f} docs/s; measuring {n:,} documents ... {load_note()}")
        payloads = bodies(hash_docs(base, n, "m"), 1000)
        create(client, "hash", HASH_MODEL, args.hash_index)
        post_before = metric_sum(client, "embedstack_http_request_duration_seconds_sum", "POST")
        model_before = metric_sum(client, "embedstack_inference_duration_seconds_sum", HASH_MODEL)
        if args.profile is not None:
            server.signal(signal.SIGUSR1)
        assert server.proc is not None
        cpu_before = cpu_seconds(server.proc.pid)
        run = write_path(client, "hash", payloads)
        cpu = cpu_seconds(server.proc.pid) - cpu_before
        if args.profile is not None:
            server.signal(signal.SIGUSR2)
        post_s = metric_sum(client, "embedstack_http_request_duration_seconds_sum", "POST")
        model_s = metric_sum(client, "embedstack_inference_duration_seconds_sum", HASH_MODEL)
    say(f"done. {load_note()}")
    chunks = run["embedded"] + run["reused"]
    rate = chunks / run["seconds"]
    met = "yes" if rate >= args.target else "NO"
    table(
        f"Write path with the {HASH_MODEL} embedder (the pipeline's ceiling)",
        ["documents", "chunks", "seconds", "docs/s", "chunks/s", "target chunks/s", "met"],
        [[run["documents"], chunks, run["seconds"], run["documents"] / run["seconds"], rate,
          args.target, met]],
    )  # fmt: skip
    say(
        f"server time in POST handlers {post_s - post_before:.1f} s, in the embedder "
        f"{model_s - model_before:.1f} s, of {run['seconds']:.1f} s wall"
    )
    say(
        f"server CPU {cpu:.1f} s ({cpu / run['seconds']:.2f} cores): {chunks / cpu:,.0f} chunks "
        "per server CPU second (what the wall rate would be with one core to itself)"
    )
    say(f"[bold]RATIO pipeline ceiling / target = {rate / args.target:.2f}[/]")
    if args.profile is not None:
        print_profile(args.profile, "the measured run")


def print_profile(path: Path, during: str) -> None:
    say(f"\nCPU profile of the server's loop and thread pools during {during}:")
    stats = pstats.Stats(str(path))
    stats.sort_stats("tottime").print_stats(25)
    stats.sort_stats("cumulative").print_stats(40)


def main() -> None:
    args = parse_args()
    preflight(
        imports=("sentence_transformers",),
        corpora=("gcide",) if args.corpus == "gcide" else (),
        files=(PYDOC_JSONL,),
    )
    if not 1 <= args.batch <= 1000:
        raise SystemExit("--batch must be 1..1000 (the server's per-request limit)")
    say(f"bench/ingest.py {' '.join(sys.argv[1:])}\n{load_note()}")
    with tempfile.TemporaryDirectory(prefix="embedstack-bench-") as tmp:
        for part in ("model", "hash"):
            (Path(tmp) / part).mkdir()
        if not args.skip_model:
            model_run(args, Path(tmp))
        if not args.skip_hash:
            hash_run(args, Path(tmp))


if __name__ == "__main__":
    main()
