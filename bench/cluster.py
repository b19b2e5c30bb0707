"""Cluster mode against single node on the same corpus: the router's query overhead (p50/p99,
QPS; hybrid queries too) and ingest throughput with 1 and 2 replicas per shard.

Everything runs on this one machine: a local Ray cluster of --nodes simulated nodes, tansu as
the shard log, redis-server as the catalog. On a 2-core box this shows the cost of the cluster
machinery (Ray calls, scatter/gather, the log hop, RF x the indexing work), not scaling: every
"node" shares the same two cores.

Single node = the same engine in process (Store + IndexManager + the ingest indexer, as a shard
replica of a 1-shard collection), no HTTP on either side.

    python bench/cluster.py --docs 5000 --queries 300
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_note, preflight, say, table, unique_gcide


def percentile(xs: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--docs", type=int, default=5000)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--nodes", type=int, default=3)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--model", default="hashing-test", help="hashing-test or all-MiniLM-L6-v2")
    ap.add_argument("--index", default="hnsw")
    ap.add_argument("--threads", type=int, default=4, help="client threads for the QPS run")
    args = ap.parse_args()
    preflight(imports=["ray", "confluent_kafka", "redis"], corpora=["gcide"])

    import ray
    from ray.cluster_utils import Cluster

    from embedstack.cluster.catalog import ClusterCollection, RedisCatalog
    from embedstack.cluster.log import LogRecord, ShardLog
    from embedstack.cluster.ray.node import node_resource
    from embedstack.cluster.ray.nodes import RayNodes, start_node_actor
    from embedstack.cluster.replica import ShardReplica
    from embedstack.cluster.router import ClusterRouter
    from embedstack.config import Settings
    from embedstack.infra.local import start_kafka, start_redis
    from embedstack.ingest.chunking import content_hash
    from embedstack.registry import hybrid
    from embedstack.registry.collections import CollectionConfigs
    from embedstack.registry.hybrid import Retrieval
    from embedstack.serving.services import build_models
    from embedstack.storage.store import DocumentRow

    say(f"[bold]cluster bench[/bold]: {load_note()}")
    entries = unique_gcide(args.docs + args.queries)
    docs = [
        DocumentRow(f"{w}-{i}", t, {}, content_hash(t, {}))
        for i, (w, t) in enumerate(entries[: args.docs])
    ]
    queries = [t[:200] for _, t in entries[args.docs :]]
    tmp = Path(tempfile.mkdtemp(prefix="bench-cluster-"))
    settings = Settings(enable_test_models=True, default_model=args.model, data_dir=tmp)
    factory = functools.partial(build_models, settings, {})
    models = factory()
    index = {"type": args.index}

    # -- single node, in process -------------------------------------------------------------
    config, space = CollectionConfigs(models, args.model).config_for("single", index=index)
    coll = ClusterCollection("single", config, space, time.time(), "none", 1, 1)
    single = ShardReplica(tmp / "single", coll, 0, models)
    records = [
        (i, LogRecord("put", tuple(docs[s : s + 64])).encode())
        for i, s in enumerate(range(0, len(docs), 64))
    ]
    started = time.perf_counter()
    single.apply(records)
    single_ingest = len(docs) / (time.perf_counter() - started)
    embedder = models.get(args.model)
    # exact neighbours, for recall@10 of both paths
    flat_config, _ = CollectionConfigs(models, args.model).config_for(
        "exact", index={"type": "exact"}
    )
    exact = ShardReplica(
        tmp / "exact",
        ClusterCollection("exact", flat_config, space, time.time(), "none", 1, 1),
        0,
        models,
    )
    exact.apply(records)

    def single_query(text: str) -> list[dict[str, object]]:
        vec = np.asarray(embedder.embed_batch([text])[0], np.float32)
        return single.search(vec, 10, None, False)

    # -- the cluster ------------------------------------------------------------------------
    kafka = start_kafka(tmp / "kafka")
    redis = start_redis(tmp / "redis")
    head = {"num_cpus": 1, "resources": {node_resource("n0"): 1}, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    t0 = time.perf_counter()
    router: ClusterRouter | None = None
    try:
        for i in range(1, args.nodes):
            cluster.add_node(num_cpus=1, resources={node_resource(f"n{i}"): 1})
        ray.init(address=cluster.address, namespace="embedstack-bench", log_to_driver=False)
        for i in range(args.nodes):
            start_node_actor(f"n{i}", str(tmp / "nodes"), kafka.address, factory)
        router = ClusterRouter(
            RedisCatalog.from_url(f"redis://{redis.address}/0"),
            ShardLog(kafka.address),
            RayNodes(),
            models,
            args.model,
        )
        router.wait_for_nodes(args.nodes, timeout=300)
        router.start(period=0.3)
        say(f"cluster of {args.nodes} nodes up in {time.perf_counter() - t0:.1f} s")
        ingest = {}
        for rf in (1, 2):
            name = f"rf{rf}"
            router.create_collection(name, shards=args.shards, replicas=rf, index=index)
            started = time.perf_counter()
            jobs = [router.put_documents(name, docs[s : s + 500]) for s in range(0, len(docs), 500)]
            acked = time.perf_counter() - started
            deadline = time.monotonic() + 1800
            while any(router.job(j)["status"] != "done" for j in jobs):
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name}: ingest did not finish in 30 min")
                time.sleep(0.2)
            ingest[rf] = (len(docs) / acked, len(docs) / (time.perf_counter() - started))

        # -- queries: same texts, sequential latency, then QPS from client threads ----------
        for q in queries[:20]:  # warm both paths
            single_query(q)
            router.query("rf2", text=q, k=10)
        recall: dict[str, list[float]] = {"single node": [], "cluster rf2": []}
        lat: dict[str, list[float]] = {"single node": [], "cluster rf2": []}
        for q in queries:
            vec = np.asarray(embedder.embed_batch([q])[0], np.float32)
            truth = {h["chunk_id"] for h in exact.search(vec, 10, None, False)}
            t = time.perf_counter()
            a = single_query(q)
            lat["single node"].append(time.perf_counter() - t)
            t = time.perf_counter()
            b = router.query("rf2", text=q, k=10)
            lat["cluster rf2"].append(time.perf_counter() - t)
            for name, hits in (("single node", a), ("cluster rf2", b)):
                found = {h["chunk_id"] for h in hits}
                recall[name].append(len(found & truth) / max(1, len(truth)))

        # hybrid (the default mode of a text query): single node's hybrid.search on its store
        # against the router's two rounds (bm25 statistics, then every shard's candidates)
        how = Retrieval()
        rf2 = router.catalog.resolve("rf2")
        hybrid_lat: dict[str, list[float]] = {"single node": [], "cluster rf2": []}
        overlap: list[float] = []
        for q in queries:
            vec = np.asarray(embedder.embed_batch([q])[0], np.float32)
            t = time.perf_counter()
            a = hybrid.search(single._store, single._indexes, "single", space, vec, q, 10, None,
                              False, how)  # fmt: skip
            hybrid_lat["single node"].append(time.perf_counter() - t)
            t = time.perf_counter()
            b = router.fused_search(rf2, rf2.space_id, vec, q, 10, None, False, how)
            hybrid_lat["cluster rf2"].append(time.perf_counter() - t)
            ids = {h["chunk_id"] for h in a}
            overlap.append(len(ids & {h["chunk_id"] for h in b}) / max(1, len(ids)))
        hybrid_base = statistics.median(hybrid_lat["single node"])

        def qps(fn: object) -> float:
            done = [0]
            stop = threading.Event()

            def loop(offset: int) -> None:
                i = offset
                while not stop.is_set():
                    fn(queries[i % len(queries)])  # type: ignore[operator]
                    done[0] += 1
                    i += 1

            threads = [threading.Thread(target=loop, args=(n,)) for n in range(args.threads)]
            start = time.perf_counter()
            for th in threads:
                th.start()
            time.sleep(5.0)
            stop.set()
            for th in threads:
                th.join()
            return done[0] / (time.perf_counter() - start)

        rates = {
            "single node": qps(single_query),
            "cluster rf2": qps(lambda q: router.query("rf2", text=q, k=10)),
        }
        base = statistics.median(lat["single node"])
        rows = [
            (
                name,
                percentile(xs, 50) * 1000,
                percentile(xs, 99) * 1000,
                rates[name],
                percentile(xs, 50) / base,
                float(np.mean(recall[name])),
            )
            for name, xs in lat.items()
        ]
        table(
            f"queries: {len(queries)} GCIDE texts, k=10, {args.index}, model {args.model}, "
            f"{args.shards} shards; QPS from {args.threads} client threads",
            ["path", "p50 ms", "p99 ms", "QPS", "p50 / single", "recall@10 vs exact"],
            rows,
        )
        table(
            f"hybrid queries (blend, embedding excluded): the same {len(queries)} texts; "
            f"top-10 overlap with single node {np.mean(overlap):.3f} ({args.index}: the shards' "
            "graphs differ from the single one; with an exact index the hits are equal)",
            ["path", "p50 ms", "p99 ms", "p50 / single"],
            [
                (
                    name,
                    percentile(xs, 50) * 1000,
                    percentile(xs, 99) * 1000,
                    percentile(xs, 50) / hybrid_base,
                )
                for name, xs in hybrid_lat.items()
            ],
        )
        table(
            f"ingest: {len(docs)} documents, {args.shards} shards on {args.nodes} nodes",
            ["path", "acked docs/s", "indexed docs/s", "indexed / single"],
            [("single node (in process)", single_ingest, single_ingest, 1.0)]
            + [(f"cluster rf{rf}", a, d, d / single_ingest) for rf, (a, d) in ingest.items()],
        )
        say(f"after: {load_note()}")
        say(
            "On one 2-core machine every simulated node shares the same cores: these ratios "
            "are the cluster's overhead, not its scaling."
        )
    finally:
        if router is not None:
            router.stop()
        ray.shutdown()
        cluster.shutdown()
        kafka.stop()
        redis.stop()
        single.close()
        exact.close()


if __name__ == "__main__":
    main()
