"""Inference as an autoscaled Ray Serve deployment, on a real local Ray instance (loopback).

One Ray head and one Serve application (the hashing test model, min 1 / max 3 replicas, short
delays; the load step sends both lanes to it) for the module: Ray and each replica take
seconds to start on a loaded 2-core box. The tests run in order under one load step: replicas
grow from 1 to the maximum, a replica killed under load has its in-flight requests sent again
to another, the load drops and the replicas shrink back to 1 without a failed request; then a
real server started with `--inference ray://HOST:PORT` answers /v1/embeddings and a text query
through the same application (its ingest through the model's bulk application, which it
deploys), and a query is not queued behind bulk requests (a Serve application per lane, the
slow test model).

The sampled replica count, queue depth and p99 are printed (pytest -s shows them)."""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.log import LogRecord
from embedstack.cluster.replica import ShardReplica
from embedstack.config import Settings
from embedstack.errors import InvalidInput, Overloaded
from embedstack.inference.autoscale import AutoscalePolicy
from embedstack.inference.batching.batcher import BatcherConfig
from embedstack.inference.serve_ray import ServeBatcher, app_name, deploy, replica_states
from embedstack.infra.local import free_port
from embedstack.ingest.chunking import content_hash
from embedstack.loadtest.autoscale import LoadStep
from embedstack.registry.collections import CollectionConfigs
from embedstack.serving.cluster_inference import ServeEmbed
from embedstack.serving.services import build_models
from embedstack.storage.store import DocumentRow
from tests.conftest import Server, server_env, wait_job

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")
pytestmark = pytest.mark.slow

MODEL = "hashing-test"
MAX_REPLICAS = 3
POLICY = AutoscalePolicy(
    min_replicas=1, max_replicas=MAX_REPLICAS, target_ongoing_requests=2.0,
    upscale_delay_s=1.0, downscale_delay_s=3.0, look_back_s=2.0, metrics_interval_s=0.5,
    drain_s=15.0, replica_cpus=0.0,
)  # fmt: skip
# the same policy for the server, as settings (it finds the application running and reuses it)
POLICY_ENV = {
    "EMBEDSTACK_INFERENCE_MAX_REPLICAS": str(MAX_REPLICAS),
    "EMBEDSTACK_INFERENCE_REPLICA_CPUS": "0",
}


@dataclass
class ServeApp:
    address: str  # Ray Client: ray://HOST:PORT
    batcher: ServeBatcher
    handle: Any
    load: LoadStep


def _texts(i: int) -> list[str]:
    return [f"request {i} text {j} about scaling" for j in range(8)]


@pytest.fixture(scope="module")
def serve_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeApp]:
    from ray.cluster_utils import Cluster

    client_port = free_port()  # Ray Client, for the server's --inference ray://HOST:PORT
    head = {"num_cpus": 2, "include_dashboard": False, "ray_client_server_port": client_port}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    settings = Settings(
        enable_test_models=True, default_model=MODEL, data_dir=tmp_path_factory.mktemp("serve")
    )
    models = build_models(settings, {})
    local = models.get(MODEL)

    def check(texts: Sequence[str], vectors: np.ndarray) -> None:
        expected = local.embed_batch(texts)
        if not np.allclose(vectors, expected, atol=1e-6):
            raise AssertionError(f"wrong vectors for {texts[0]!r}")

    load = None
    try:
        ray.init(address=cluster.address, namespace="embedstack-tests", log_to_driver=False)
        factory = functools.partial(build_models, settings, {})
        handle = deploy(factory, MODEL, BatcherConfig(), POLICY)
        batcher = ServeBatcher(handle, local.spec)
        load = LoadStep(batcher, _texts, lambda: replica_states(MODEL), check).start()
        host = cluster.address.rsplit(":", 1)[0]
        yield ServeApp(f"ray://{host}:{client_port}", batcher, handle, load)
    finally:
        if load is not None:
            load.stop()
            _print(load)
        serve.shutdown()
        ray.shutdown()
        cluster.shutdown()


def _print(load: LoadStep) -> None:
    print("\nt_s callers running starting stopping queued_texts p99_ms done failed")
    for row in load.rows():
        print(" ".join(str(v) for v in row))


def test_replicas_grow_under_a_load_step(serve_app: ServeApp) -> None:
    load = serve_app.load
    assert load.wait_for(lambda s: s.running >= 1, 30).running == 1
    load.set_callers(24)  # about 24 ongoing requests against a target of 2 per replica
    grown = load.wait_for(lambda s: s.running == MAX_REPLICAS, 120)
    assert grown.running == MAX_REPLICAS
    assert max(s.running for s in load.samples) <= MAX_REPLICAS
    assert load.failures == []
    assert load.done > 0


def test_replica_refusals_cross_the_handle_as_our_errors(serve_app: ServeApp) -> None:
    """Under load a query with a 1 ms budget is refused by the replica's batcher (its Overloaded,
    with Retry-After, comes back as Overloaded: 429); a bulk request over a replica's bulk lane
    comes back as InvalidInput (400)."""
    load = serve_app.load
    load.wait_for(lambda s: s.queued > 0, 60)
    refused = []
    for _ in range(20):
        try:
            asyncio.run(serve_app.batcher.embed(["tight"], "query", time.monotonic() + 0.001))
        except Overloaded as exc:
            refused.append(exc)
    assert refused, "no query with a 1 ms budget was refused under load"
    assert all(exc.retry_after > 0 for exc in refused)
    assert any("ran out before" not in exc.message for exc in refused)  # the replica's own
    with pytest.raises(InvalidInput, match="split the request"):
        asyncio.run(serve_app.batcher.embed(["x"] * 5000, "bulk"))
    assert load.failures == []


def _live_replicas() -> list[Any]:
    """The replica actors of the test application that answer (a named actor may be dead)."""
    live = []
    for a in ray.util.list_named_actors(all_namespaces=True):
        if a["namespace"] != "serve" or app_name(MODEL) not in a["name"]:
            continue
        if "REPLICA" not in a["name"]:
            continue
        actor = ray.get_actor(a["name"], namespace="serve")
        try:
            ray.get(actor.__ray_ready__.remote(), timeout=10)
        except Exception:
            continue
        live.append(actor)
    return live


def test_a_killed_replicas_requests_are_sent_to_another(serve_app: ServeApp) -> None:
    load = serve_app.load
    assert load.wait_for(lambda s: s.running == MAX_REPLICAS, 60)
    live = _live_replicas()
    assert len(live) == MAX_REPLICAS, live
    before = load.done
    ray.kill(live[0], no_restart=True)
    # Serve notices (health check) and starts a replacement. The ~8 requests in flight on the
    # dead replica are sent to another one: by Serve's router itself when it learns of the death
    # first, else by ServeBatcher when they come back as an actor error (counted in `resent`)
    load.wait_for(lambda s: s.running < MAX_REPLICAS or s.replicas.get("STARTING", 0) > 0, 60)
    load.wait_for(lambda s: s.done > before + 200, 60)
    print(f"\nafter the kill: {serve_app.batcher.resent} requests resent by ServeBatcher")
    assert load.failures == []


def test_replicas_shrink_back_without_failures(serve_app: ServeApp) -> None:
    load = serve_app.load
    # a trickle keeps requests in flight while replicas drain and stop (2 callers against a
    # target of 2 per replica sit on the boundary: Ray rounds 2.x up and keeps 2 replicas)
    load.set_callers(1)
    shrunk = load.wait_for(lambda s: s.running == 1 and len(s.replicas) == 1, 120)
    assert shrunk.running == 1
    after_peak = load.samples[-40:]
    assert any(s.replicas.get("STOPPING", 0) for s in load.samples), "no replica was stopped"
    assert load.failures == []
    assert after_peak[-1].failed == 0


def test_a_full_deployment_refuses_at_once_with_overloaded(serve_app: ServeApp) -> None:
    """More requests at once than the replicas take (32 each) plus what may wait at this caller
    (inference_max_queued, 512): the rest are refused at once with Overloaded (429)."""
    serve_app.load.set_callers(0)

    async def burst() -> list[Any]:
        calls = [serve_app.batcher.embed([f"burst {i}"], "query") for i in range(2000)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(burst())
    refused = [r for r in results if isinstance(r, Overloaded)]
    other = [r for r in results if isinstance(r, BaseException) and not isinstance(r, Overloaded)]
    assert other == []
    assert refused, "2000 requests at once fitted in the replicas and the caller's queue"
    assert all("every replica" in r.message and r.retry_after > 0 for r in refused)
    assert len(refused) < len(results)  # the rest were embedded


def test_a_server_with_inference_on_ray_serves_embeddings_and_queries(
    serve_app: ServeApp, tmp_path: Path
) -> None:
    serve_app.load.set_callers(0)
    serve_app.load.wait_for(lambda s: s.running == 1 and len(s.replicas) == 1, 60)
    before = serve_app.handle.embedded.remote().result(timeout_s=30)
    env = server_env(EMBEDSTACK_DEFAULT_MODEL=MODEL, **POLICY_ENV)
    server = Server(tmp_path / "data", env, ["--inference", serve_app.address]).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            texts = ["autoscaled inference", "a second text"]
            resp = c.post("/v1/embeddings", json={"input": texts, "model": MODEL})
            assert resp.status_code == 200, resp.text
            got = np.array([d["embedding"] for d in resp.json()["data"]], dtype=np.float32)
            local = build_models(Settings(enable_test_models=True), {}).get(MODEL)
            assert np.allclose(got, local.embed_batch(texts), atol=1e-6)
            # a budget no replica can meet: 429 with Retry-After, as on one node
            tight = c.post(
                "/v1/embeddings", json={"input": texts, "model": MODEL},
                headers={"X-Request-Budget-Ms": "0.001"},
            )  # fmt: skip
            assert tight.status_code == 429, tight.text
            assert float(tight.headers["Retry-After"]) > 0
            c.post("/v1/collections", json={"name": "docs"}).raise_for_status()
            docs = [{"id": f"d{i}", "text": f"document {i} on topic {i % 3}"} for i in range(20)]
            resp = c.post("/v1/collections/docs/documents", json={"documents": docs})
            assert resp.status_code == 202, resp.text
            assert wait_job(c, resp.json()["job_id"], 120)["status"] == "done"
            resp = c.post("/v1/collections/docs/query", json={"text": "document 7", "k": 3})
            assert resp.status_code == 200, resp.text
            hits = resp.json()["hits"]
            assert len(hits) == 3
    finally:
        server.stop()
    after = serve_app.handle.embedded.remote().result(timeout_s=30)
    assert after - before == 3  # the embeddings (2) and the query (1): the query lane
    # the ingested chunks went to the bulk lane's own application, deployed by the server
    bulk = serve.get_app_handle(app_name(MODEL, "bulk"))
    assert bulk.embedded.remote().result(timeout_s=30) == 20


def test_shard_replicas_embed_their_log_through_the_deployment(
    serve_app: ServeApp, tmp_path: Path
) -> None:
    """A cluster shard replica whose node was started with ServeEmbed (`cluster up
    --inference`): the documents of its log are embedded by the deployment's bulk lane, with
    the vectors the node's own model would give."""
    serve_app.load.wait_for(lambda s: s.running == 1 and len(s.replicas) == 1, 60)
    bulk = serve.get_app_handle(app_name(MODEL, "bulk"))  # deployed by the server test
    before = bulk.embedded.remote().result(timeout_s=30)
    settings = Settings(
        enable_test_models=True, default_model=MODEL, data_dir=tmp_path,
        inference=serve_app.address, inference_max_replicas=MAX_REPLICAS,
        inference_replica_cpus=0,
    )  # fmt: skip
    models = build_models(settings, {})
    config, space = CollectionConfigs(models, MODEL).config_for("docs", index={"type": "exact"})
    coll = ClusterCollection("docs", config, space, time.time(), "t", 4, 2)
    replica = ShardReplica(tmp_path / "replica", coll, 0, models, ServeEmbed(settings)(models))
    texts = {f"d{i}": f"shard document {i} about topic {i % 3}" for i in range(12)}
    rows = tuple(DocumentRow(d, t, {}, content_hash(t, {})) for d, t in texts.items())
    assert replica.apply([(0, LogRecord("put", rows).encode())]) == 1
    after = bulk.embedded.remote().result(timeout_s=30)
    assert after - before == len(texts)  # every chunk went through the bulk lane's replica
    local = models.get(MODEL)
    hits = replica.search(local.embed_batch(["shard document 5"])[0], 1, None, False)
    assert hits[0]["document_id"] == "d5"


# one replica per lane, 2 requests at once each: a few bulk requests saturate it
LANE_POLICY = AutoscalePolicy(
    min_replicas=1, max_replicas=1, max_ongoing_requests=2, look_back_s=2.0,
    metrics_interval_s=0.5, replica_cpus=0.0,
)  # fmt: skip


async def _bulk_done_while_a_query_waits(batcher: ServeBatcher, n_bulk: int) -> int:
    """Send `n_bulk` bulk requests (64 texts: one batch each) at once; once the first is answered (the
    replicas are busy and the rest queued), one query: how many bulk requests were answered
    between sending the query and its answer."""
    done: list[int] = []

    async def bulk(i: int) -> None:
        await batcher.embed([f"bulk {i} text {j}" for j in range(64)], "bulk")
        done.append(i)

    tasks = [asyncio.create_task(bulk(i)) for i in range(n_bulk)]
    for _ in range(600):  # bounded: 30 s
        if done or all(t.done() for t in tasks):
            break
        await asyncio.sleep(0.05)
    assert done, "no bulk request was answered in 30 s"
    sent = len(done)
    await batcher.embed(["the query"], "query")
    waited = len(done) - sent
    await asyncio.gather(*tasks)
    assert len(done) == n_bulk
    return waited


def test_queries_do_not_queue_behind_bulk_requests(serve_app: ServeApp, tmp_path: Path) -> None:
    """The slow test model (25 ms a batch + 1 ms a text: ~90 ms a bulk request), one replica
    per lane taking 2 requests at once: 24 bulk requests saturate the bulk lane (22 wait). A
    query sent then is answered while at most a few bulk requests complete, since it goes to
    the query lane's own replica; sent to one application shared by both lanes (the design
    before), the same query waits at the handle behind the queued bulk requests and is
    answered after most of them. The caller's bound on bulk requests in flight (8) is reached
    and never passed."""
    settings = Settings(enable_test_models=True, data_dir=tmp_path)
    factory = functools.partial(build_models, settings, {})
    spec = build_models(settings, {}).get("slow-test").spec
    config = BatcherConfig()
    query = deploy(factory, "slow-test", config, LANE_POLICY)
    bulk = deploy(factory, "slow-test", config, LANE_POLICY, "bulk")
    n_bulk = 24
    split = ServeBatcher(query, spec, bulk_handle=bulk, bulk_in_flight=8)
    waited_split = asyncio.run(_bulk_done_while_a_query_waits(split, n_bulk))
    shared = ServeBatcher(query, spec)  # bulk to the query application, no bound
    waited_shared = asyncio.run(_bulk_done_while_a_query_waits(shared, n_bulk))
    print(
        f"\nbulk requests answered while a query waited: {waited_split} of {n_bulk} "
        f"(a lane each), {waited_shared} (one application for both lanes)"
    )
    assert split.bulk_slots is not None and split.bulk_slots.most == 8
    assert waited_split < n_bulk // 4
    assert waited_shared >= n_bulk // 2  # the test can tell the difference
