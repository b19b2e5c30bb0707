"""Cluster mode on a real local Ray cluster (3 simulated nodes on loopback), a real Kafka-protocol
log (tansu) and a real replicated Redis catalog (primary, 2 replicas, 3 Sentinels): 4 virtual
shards x replication factor 2.

One cluster for the module (Ray takes 10-40 s to start on a loaded 2-core box); the tests run in
order: ingest and compare with a real single-node server, a model upgrade over the HTTP API of
an API node, then kill a node under load, then add a node."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import json
import random
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.routing import APIRoute
from prometheus_client import generate_latest

from embedstack.cluster.catalog import RedisCatalog
from embedstack.cluster.log import ShardLog
from embedstack.cluster.ray.node import node_resource
from embedstack.cluster.ray.nodes import RayNodes, start_node_actor
from embedstack.cluster.router import ClusterRouter
from embedstack.cluster.shards import moves, place, shard_of
from embedstack.config import Settings
from embedstack.infra.local import LocalProcess, RedisHA
from embedstack.ingest.chunking import content_hash
from embedstack.serving.app import ROUTE_MODULES
from embedstack.serving.cluster_app import ClusterCollectionOut, create_cluster_app
from embedstack.serving.cluster_inference import ServeQueryEmbedder
from embedstack.serving.responses import CollectionOut, DocumentOut, EmbeddingsOut, UpgradeOut
from embedstack.serving.services import build_models
from embedstack.storage.store import DocumentRow
from tests.conftest import DATA, Server, load_jsonl, server_env, wait_job

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SHARDS, REPLICAS = 4, 2
PIECE = 64 << 10  # shard transfer piece size
PINNED = '{"all-MiniLM-L6-v2": "onnx-fp32"}'  # the same backend on both sides, gated once
CORPUS = [r for r in load_jsonl(DATA / "pydoc_sections.jsonl")][:400]
QUERIES = [
    "how do I open a file for reading",
    "sort a list in place",
    "regular expression groups",
    "create a thread and wait for it",
    "dictionary comprehension",
    "exceptions and tracebacks",
    "socket server example",
    "format a date as a string",
]


@dataclass
class LocalCluster:
    cluster: Any
    router: ClusterRouter
    nodes: dict[str, Any]  # name -> ray node
    root: Path
    bootstrap: str
    factory: Any

    def add(self, name: str) -> None:
        self.nodes[name] = self.cluster.add_node(num_cpus=1, resources={node_resource(name): 1})

    def start_actor(self, name: str) -> None:
        # small snapshot pieces: a shard transfer takes several (each shard's store is ~1 MB)
        start_node_actor(name, str(self.root), self.bootstrap, self.factory, None, PIECE)


@pytest.fixture(scope="module")
def local_cluster(
    tmp_path_factory: pytest.TempPathFactory,
    kafka_broker: LocalProcess,
    redis_ha: RedisHA,
) -> Iterator[LocalCluster]:
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("cluster")
    head = {"num_cpus": 1, "resources": {node_resource("n0"): 1}, "include_dashboard": False}
    cluster = Cluster(initialize_head=True, head_node_args=head)
    settings = Settings(
        enable_test_models=True,
        default_model="hashing-test",
        data_dir=root,
        model_backends=json.loads(PINNED),
    )
    factory = functools.partial(build_models, settings, {})
    catalog = RedisCatalog.from_url(redis_ha.url(1))
    router = ClusterRouter(
        catalog, ShardLog(kafka_broker.address), RayNodes(), factory(), "hashing-test"
    )
    local = LocalCluster(
        cluster, router, {"n0": cluster.head_node}, root, kafka_broker.address, factory
    )
    try:
        local.add("n1")
        local.add("n2")
        ray.init(address=cluster.address, namespace="embedstack-tests")
        for name in ("n0", "n1", "n2"):
            local.start_actor(name)
        router.wait_for_nodes(3)
        router.start(period=0.3)
        yield local
    finally:
        router.stop()
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def api_node(local_cluster: LocalCluster) -> Iterator[httpx.Client]:
    """A cluster API node (the app `embedstack serve --cluster` runs) on the module's cluster,
    served by uvicorn on a loopback port in this process: real HTTP, with an admin API key
    from the catalog."""
    app = create_cluster_app(local_cluster.router, api_settings(local_cluster))
    # its own request rate: the probers of the upgrade test may pass the default 100/s
    admin, _ = local_cluster.router.catalog.keys().create_key(
        scopes=["admin"], name="tests", rate_rps=10_000.0
    )
    headers = {"Authorization": f"Bearer {admin}"}
    with serving(app) as url, httpx.Client(base_url=url, timeout=60, headers=headers) as client:
        yield client
    local_cluster.router.on_round.clear()


def api_settings(local_cluster: LocalCluster, **more: Any) -> Settings:
    return Settings(
        enable_test_models=True, default_model="hashing-test", cluster_shards=SHARDS,
        cluster_replicas=REPLICAS, data_dir=local_cluster.root, **more,
    )  # fmt: skip


@contextlib.contextmanager
def serving(app: Any) -> Iterator[str]:
    """`app` served by uvicorn on a loopback port in this process (real HTTP); its URL."""
    import uvicorn

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the API node did not start in 30 s"
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def rows(items: list[dict[str, Any]]) -> list[DocumentRow]:
    return [
        DocumentRow(
            str(r["id"]),
            str(r["text"]),
            dict(r["metadata"]),
            content_hash(str(r["text"]), dict(r["metadata"])),
        )  # type: ignore[arg-type]
        for r in items
    ]


def placed_on(router: ClusterRouter, name: str, nodes: list[str]) -> dict[int, tuple[str, ...]]:
    coll = router.catalog.get(name)
    return place(coll.shards, nodes, coll.replicas, coll.topic)


def wait_cluster_job(router: ClusterRouter, job_id: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if router.job(job_id)["status"] == "done":
            return
        time.sleep(0.1)
    raise TimeoutError(f"cluster job {job_id}: {router.job(job_id)}")


def replica_statuses(router: ClusterRouter, name: str) -> dict[tuple[str, int], dict[str, Any]]:
    """(node, shard) -> that replica's status, from every live node's own status."""
    import ray as r

    topic = router.catalog.get(name).topic
    out = {}
    for node, handle in router._nodes.handles().items():
        try:
            status = r.get(handle.status.remote(), timeout=3)
        except Exception:
            continue
        for rep in status["replicas"]:
            if rep["topic"] == topic:
                out[(node, rep["shard"])] = rep
    return out


def shard_documents(router: ClusterRouter, name: str) -> dict[tuple[str, int], int]:
    """(node, shard) -> documents in that replica."""
    return {k: int(v["documents"]) for k, v in replica_statuses(router, name).items()}


# query bodies run on a single-node server and on an API node: the default (hybrid, blend,
# first_prior), lexical, other fusions and document scorings, a filter
FUSED_CASES: list[dict[str, Any]] = [
    {},
    {"mode": "lexical"},
    {"mode": "hybrid", "fusion": "rrf", "alpha": 0.7},
    {"group_by": "document"},
    {"mode": "dense", "group_by": "document"},
    {"mode": "lexical", "group_by": "document", "doc_scoring": "max_sum"},
]


def same_hits(cluster: dict[str, Any], single: dict[str, Any], tol: float = 1e-5) -> None:
    """The same hits (up to the order of equal scores) with the same scores and mode."""
    assert cluster["mode"] == single["mode"]
    a, b = cluster["hits"], single["hits"]
    assert [h["chunk_id"] for h in a] == [h["chunk_id"] for h in b] or _ties(a, b), (a, b)
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert abs(x["score"] - y["score"]) <= tol, (x, y)


def test_ingest_and_query_equal_single_node(
    local_cluster: LocalCluster, api_node: httpx.Client, tmp_path: Path
) -> None:
    router = local_cluster.router
    router.create_collection("docs", shards=SHARDS, replicas=REPLICAS, index={"type": "exact"})
    wait_cluster_job(router, router.put_documents("docs", rows(CORPUS)))
    # every shard's replicas hold exactly the documents that hash to it
    expected = {s: 0 for s in range(SHARDS)}
    for r in CORPUS:
        expected[shard_of(str(r["id"]), SHARDS)] += 1
    held = shard_documents(router, "docs")
    assert len(held) == SHARDS * REPLICAS
    for (_, shard), n in held.items():
        assert n == expected[shard]

    # the same corpus on a real single-node server (hashing model, exact index)
    server = Server(
        tmp_path / "single", server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    ).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as c:
            c.post(
                "/v1/collections", json={"name": "docs", "index": {"type": "exact"}}
            ).raise_for_status()
            body = {
                "documents": [
                    {"id": r["id"], "text": r["text"], "metadata": r["metadata"]} for r in CORPUS
                ]
            }
            resp = c.post("/v1/collections/docs/documents", json=body)
            assert resp.status_code == 202, resp.text
            assert wait_job(c, resp.json()["job_id"])["status"] == "done"
            for q in QUERIES:
                for extra in ({}, {"group_by": "document", "doc_scoring": "max"}):
                    single = c.post(
                        "/v1/collections/docs/query",
                        json={"text": q, "k": 10, "mode": "dense", **extra},
                    ).json()["hits"]
                    hits = router.query("docs", text=q, k=10, group=bool(extra))
                    assert [h["chunk_id"] for h in hits] == [
                        h["chunk_id"] for h in single
                    ] or _ties(hits, single), q
                    assert [round(h["score"], 5) for h in hits] == [
                        round(h["score"], 5) for h in single
                    ]
            # hybrid and lexical: every shard's bm25 with the collection's statistics, fused by
            # the single-node code, gives the single node's hits and scores
            filtered = {"filter": {"file": CORPUS[0]["metadata"]["file"]}}
            for q in QUERIES:
                for extra in [*FUSED_CASES, {**FUSED_CASES[0], **filtered}]:
                    body = {"text": q, "k": 10, **extra}
                    single = c.post("/v1/collections/docs/query", json=body)
                    got = api_node.post("/v1/collections/docs/query", json=body)
                    assert got.status_code == single.status_code == 200, got.text
                    same_hits(got.json(), single.json())
                    assert got.json()["hits"], body
    finally:
        server.stop()


def _ties(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Equal up to the order of equal scores."""
    key = lambda hs: sorted((round(h["score"], 5), h["chunk_id"]) for h in hs)  # noqa: E731
    return key(a) == key(b)


def test_real_model_hits_equal_single_node(
    local_cluster: LocalCluster, api_node: httpx.Client, tmp_path: Path
) -> None:
    """The bundled all-MiniLM-L6-v2 on both sides: replicas embed with it, the router embeds
    queries with it; a flat index gives the same hits as a single-node server, dense and hybrid
    (the default mode of a text query)."""
    router = local_cluster.router
    corpus = CORPUS[:60]
    router.create_collection(
        "real", shards=SHARDS, replicas=REPLICAS, model="all-MiniLM-L6-v2", index={"type": "exact"}
    )
    wait_cluster_job(router, router.put_documents("real", rows(corpus)), timeout=600)
    env = server_env(EMBEDSTACK_MODEL_BACKENDS=PINNED)
    server = Server(tmp_path / "single-real", env).start(timeout=300)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as c:
            body = {"name": "real", "model": "all-MiniLM-L6-v2", "index": {"type": "exact"}}
            c.post("/v1/collections", json=body).raise_for_status()
            docs = [{"id": r["id"], "text": r["text"], "metadata": r["metadata"]} for r in corpus]
            resp = c.post("/v1/collections/real/documents", json={"documents": docs})
            assert wait_job(c, resp.json()["job_id"], timeout=600)["status"] == "done"
            for q in QUERIES[:4]:
                single = c.post(
                    "/v1/collections/real/query", json={"text": q, "k": 10, "mode": "dense"}
                ).json()["hits"]
                hits = router.query("real", text=q, k=10)
                assert [h["chunk_id"] for h in hits] == [h["chunk_id"] for h in single], q
                for a, b in zip(hits, single, strict=True):
                    assert abs(a["score"] - b["score"]) < 1e-4
                for extra in ({}, {"group_by": "document"}):
                    body = {"text": q, "k": 10, **extra}
                    single_hybrid = c.post("/v1/collections/real/query", json=body).json()
                    got = api_node.post("/v1/collections/real/query", json=body).json()
                    assert single_hybrid["mode"] == "hybrid"
                    same_hits(got, single_hybrid, tol=1e-3)
    finally:
        server.stop()


def test_filter_is_pushed_down(local_cluster: LocalCluster) -> None:
    router = local_cluster.router
    meta = [r for r in CORPUS if r["metadata"]]
    assert meta, "the corpus has metadata to filter on"
    field, value = next(iter(meta[0]["metadata"].items()))
    hits = router.query("docs", text=QUERIES[0], k=10, flt={field: value})
    assert hits and all(h["metadata"][field] == value for h in hits)


def _doc(i: int) -> dict[str, Any]:
    rng = random.Random(i)
    return {"id": f"d{i}", "text": " ".join(f"w{rng.randrange(3000)}" for _ in range(30))}


def _wait_state(c: httpx.Client, name: str, states: set[str], timeout: float = 120) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = c.get(f"/v1/collections/{name}/upgrade").json()
        if st["state"] in states:
            return st
        time.sleep(0.1)
    raise TimeoutError(f"upgrade of {name} never reached {states}: {st}")


class Prober(threading.Thread):
    """Queries an API node continuously; a query that mixed spaces (embedded with one model,
    searched in the other's vectors) would not find the document itself on top."""

    def __init__(self, client: httpx.Client, docs: list[dict[str, Any]]) -> None:
        super().__init__(daemon=True)
        self.client, self.docs = client, docs
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.spaces: set[str] = set()
        self.count = 0

    def run(self) -> None:
        while not self.stop.is_set():
            doc = self.docs[self.count % len(self.docs)]
            self.count += 1
            r = self.client.post(
                "/v1/collections/alias-up/query", json={"text": doc["text"], "k": 3}
            )
            if r.status_code != 200:
                self.errors.append(f"{r.status_code} {r.text}")
                continue
            self.spaces.add(r.json()["space_id"])
            top = r.json()["hits"][0]
            if top["document_id"] != doc["id"] or top["score"] < 0.99:
                self.errors.append(f"mixed or wrong answer for {doc['id']}: {top}")


def _wait_http_job(c: httpx.Client, job_id: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if c.get(f"/v1/jobs/{job_id}").json()["status"] == "done":
            return
        time.sleep(0.1)
    raise TimeoutError(f"job {job_id}: {c.get(f'/v1/jobs/{job_id}').json()}")


def test_upgrade_cutover_rollback_over_http(api_node: httpx.Client) -> None:
    """The single-node upgrade API on an API node: shadow back-fill by every shard replica with
    writes during it, the labeled gate, an atomic cutover and a rollback under continuous
    queries (zero errors, no mixed-space answer), retire; the description has single-node
    fields; every single-node route is served (none answers 501)."""
    c = api_node
    docs = [_doc(i) for i in range(200)]
    made = c.post("/v1/collections", json={"name": "up", "model": "hashing-test"})
    assert made.status_code == 201, made.text
    _wait_http_job(
        c, c.post("/v1/collections/up/documents", json={"documents": docs}).json()["job_id"]
    )
    assert c.post("/v1/aliases", json={"alias": "alias-up", "collection": "up"}).status_code == 200
    described = c.get("/v1/collections/alias-up").json()
    assert set(CollectionOut.model_fields) <= set(described)
    assert described["documents"] == described["vectors"] == 200
    old = described["space_id"]
    # version parity: a vector must name the serving space
    vec = c.post("/v1/collections/up/query", json={"vector": [0.1] * described["dim"]})
    assert vec.status_code == 409 and old in vec.json()["error"]["message"]

    probers = [Prober(c, docs[:150]) for _ in range(2)]
    for p in probers:
        p.start()
    labeled = [{"query": d["text"], "document_id": d["id"]} for d in docs[:100:4]]
    r = c.post(
        "/v1/collections/up/upgrade",
        json={"model": "hashing-test-b", "eval": labeled, "gate": {"k": 5}},
    )
    assert r.status_code == 202, r.text
    assert r.json()["state"] == "backfilling" and r.json()["total"] == 200
    again = c.post("/v1/collections/up/upgrade", json={"model": "hashing-test-b"})
    assert again.status_code == 409
    # writes during the back-fill reach both spaces
    more = [_doc(i) for i in range(200, 220)]
    _wait_http_job(
        c, c.post("/v1/collections/up/documents", json={"documents": more}).json()["job_id"]
    )
    st = _wait_state(c, "up", {"ready"})
    assert st["done"] == st["total"] == 200
    new = st["to_space"]
    described = c.get("/v1/collections/up").json()
    ClusterCollectionOut.model_validate(described)  # the declared models, as test_responses
    models = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert models["hashing-test-b"]["space_id"] == new
    UpgradeOut.model_validate(st)
    assert described["shadow"]["model"] == "hashing-test-b"
    assert described["shadow"]["vectors"] == described["vectors"] == 220
    # as on single node, a query may name the shadow space (embedded with the shadow's model)
    shadow = {"text": docs[0]["text"], "k": 1, "space_id": new}
    shadow_hits = c.post("/v1/collections/up/query", json=shadow).json()
    assert shadow_hits["space_id"] == new and shadow_hits["hits"][0]["document_id"] == "d0"
    other = c.post("/v1/collections/up/query", json={"text": "x", "space_id": "sp_other"})
    assert other.status_code == 409 and "sp_other" in other.json()["error"]["message"]

    r = c.post("/v1/collections/up/upgrade/cutover", json={})
    assert r.status_code == 200, r.text
    report = r.json()["report"]
    assert report["mode"] == "labeled" and report["passed"]
    assert report["new"]["recall"] == report["old"]["recall"] == 1.0
    time.sleep(1.0)
    described = c.get("/v1/collections/alias-up").json()
    assert described["space_id"] == new and described["previous"]["space_id"] == old
    assert described["model"] == "hashing-test-b"
    # written after the cutover: in both spaces, so a rollback keeps it
    late = {"id": "late", "text": "completely fresh words for a late document"}
    _wait_http_job(
        c, c.post("/v1/collections/up/documents", json={"documents": [late]}).json()["job_id"]
    )
    r = c.post("/v1/collections/up/rollback")
    assert r.status_code == 200 and r.json()["space_id"] == old
    time.sleep(1.0)
    for p in probers:
        p.stop.set()
        p.join(timeout=30)
    assert sum(p.count for p in probers) > 20
    assert [e for p in probers for e in p.errors] == []
    assert {old, new} == set().union(*(p.spaces for p in probers))
    hit = c.post("/v1/collections/up/query", json={"text": late["text"], "k": 1}).json()
    assert hit["space_id"] == old and hit["hits"][0]["document_id"] == "late"
    assert c.get("/v1/collections/up/upgrade").json()["state"] == "rolled_back"
    r = c.post("/v1/collections/up/retire", json={})
    assert r.status_code == 200 and r.json()["retired"] == new
    assert c.get("/v1/collections/up").json()["previous"] is None
    assert c.post("/v1/collections/up/rollback").status_code == 409
    # an auto cutover (the reconcile loop runs it once ready) with the unlabeled gate: stored
    # texts sampled from every shard, top-k overlap between the spaces
    auto = {"model": "hashing-test-b", "auto_cutover": True, "gate": {"min_overlap": 0.0}}
    assert c.post("/v1/collections/up/upgrade", json=auto).status_code == 202
    st = _wait_state(c, "up", {"cut_over", "gate_failed", "failed"})
    assert st["state"] == "cut_over" and st["report"]["mode"] == "overlap", st
    assert st["report"]["queries"] > 0
    assert c.get("/v1/collections/up").json()["model"] == "hashing-test-b"

    # every single-node route is served in cluster mode: none answers the 501 of a route left
    # out (asked about a collection, alias, job or key that does not exist, with a body of an
    # unknown field: nothing changes)
    names = {"name": "no-such", "doc_id": "d0", "alias": "no-such", "job_id": "no-such",
             "prefix": "no-such"}  # fmt: skip
    for module in ROUTE_MODULES:
        for route in module.router.routes:
            assert isinstance(route, APIRoute)
            for method in sorted((route.methods or set()) - {"HEAD"}):
                r = c.request(method, route.path.format(**names), json={"_": 0})
                assert r.status_code != 501, (method, route.path, r.text)
    # documents by id, as on single node: read from a replica of the shard; a delete answers
    # 200 once every placed replica applied it
    got = c.get("/v1/collections/up/documents/d5").json()
    assert DocumentOut.model_validate(got).text == docs[5]["text"] and got["indexed"]
    assert c.delete("/v1/collections/up/documents/d5").json() == {"deleted": "d5"}
    assert c.get("/v1/collections/up/documents/d5").status_code == 404
    assert c.delete("/v1/collections/up/documents/d5").status_code == 404
    top = c.post("/v1/collections/up/query", json={"text": docs[5]["text"], "k": 1}).json()
    assert top["hits"][0]["document_id"] != "d5"
    assert c.delete("/v1/aliases/alias-up").json() == {"deleted": "alias-up"}
    assert c.delete("/v1/collections/up").json() == {"deleted": "up"}


def test_api_keys_in_the_catalog(api_node: httpx.Client) -> None:
    """Keys live in the shared catalog: created over HTTP by an admin key, checked on every
    request (401 without one, 403 without the route's scope), revoked for every API node."""
    url = str(api_node.base_url)
    with httpx.Client(base_url=url, timeout=30) as anonymous:
        assert anonymous.get("/healthz").status_code == 200  # open, as on single node
        r = anonymous.get("/v1/collections")
        assert r.status_code == 401 and "API key" in r.json()["error"]["message"]
        bad = anonymous.get("/v1/collections", headers={"Authorization": "Bearer es_nope"})
        assert bad.status_code == 401
    made = api_node.post("/v1/keys", json={"scopes": ["read"], "name": "reader"})
    assert made.status_code == 201, made.text
    reader = made.json()["key"]
    assert made.json()["prefix"] in {k["prefix"] for k in api_node.get("/v1/keys").json()["keys"]}
    with httpx.Client(base_url=url, timeout=30, headers={"Authorization": f"Bearer {reader}"}) as c:
        hits = c.post("/v1/collections/docs/query", json={"text": QUERIES[0], "k": 3})
        assert hits.status_code == 200 and len(hits.json()["hits"]) == 3
        r = c.post("/v1/collections", json={"name": "nope"})
        assert r.status_code == 403 and "'admin'" in r.json()["error"]["message"]
        r = c.post("/v1/collections/docs/documents", json={"documents": [{"id": "x", "text": "x"}]})
        assert r.status_code == 403 and "'write'" in r.json()["error"]["message"]
        revoked = api_node.delete(f"/v1/keys/{made.json()['prefix']}")
        assert revoked.status_code == 200 and not revoked.json()["active"]
        assert c.get("/v1/collections/docs").status_code == 401


def test_catalog_primary_killed_while_an_api_node_serves(
    api_node: httpx.Client, redis_ha: RedisHA
) -> None:
    """kill -9 of the catalog's primary under continuous queries: queries pause for the
    failover (bounded by cluster_catalog_failover_s) and none fails; a collection created before
    the kill is there after it; creating one after it works."""
    c = api_node
    made = c.post("/v1/collections", json={"name": "ha-before", "model": "hashing-test"})
    assert made.status_code == 201, made.text
    docs = [_doc(i) for i in range(20)]
    job = c.post("/v1/collections/ha-before/documents", json={"documents": docs})
    _wait_http_job(c, job.json()["job_id"])
    answered: list[tuple[float, int, float]] = []  # (started, status, seconds)
    stop = threading.Event()

    def probe() -> None:
        while not stop.is_set():
            t0 = time.monotonic()
            r = c.post("/v1/collections/ha-before/query", json={"text": docs[0]["text"]})
            answered.append((t0, r.status_code, time.monotonic() - t0))

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    old = redis_ha.primary()
    try:
        time.sleep(0.5)
        old.kill()
        killed = time.monotonic()
        new = redis_ha.primary(30)
        time.sleep(1.0)  # queries after the failover
        stop.set()
        prober.join(timeout=60)
        failed = [a for a in answered if a[1] != 200]
        assert not failed, failed[:5]
        after = [a for a in answered if a[0] > killed]
        slowest = max(a[2] for a in answered)
        print(f"catalog failover: {len(answered)} queries, {len(after)} after the kill, "
              f"none failed, slowest {slowest:.2f} s")  # fmt: skip
        assert len(after) >= 3 and slowest < 45, answered[-5:]
        assert new.port != old.port
        assert c.get("/v1/collections/ha-before").json()["documents"] == 20
        r = c.post("/v1/collections", json={"name": "ha-after", "model": "hashing-test"})
        assert r.status_code == 201, r.text
        names = {x["name"] for x in c.get("/v1/collections").json()["collections"]}
        assert {"ha-before", "ha-after"} <= names
    finally:
        stop.set()
        redis_ha.restart(old)  # back as a replica, so later tests have three again
        redis_ha.wait_ready()
        for name in ("ha-before", "ha-after"):
            c.delete(f"/v1/collections/{name}")


def test_tenants_grants_and_rate_limits(
    api_node: httpx.Client, local_cluster: LocalCluster
) -> None:
    """As on single node: a key's tenant is a namespace (another tenant's collections, aliases,
    documents and jobs are 404s, the same plain name is a different collection), a key granted
    some collections is refused the others (403), a key's request rate is enforced (429 +
    Retry-After)."""
    url = str(api_node.base_url)

    def client(key: str) -> httpx.Client:
        return httpx.Client(base_url=url, timeout=60, headers={"Authorization": f"Bearer {key}"})

    # as `embedstack keys create --catalog redis://... --tenant acme --scope admin`
    acme_key, _ = local_cluster.router.catalog.keys().create_key(tenant="acme", scopes=["admin"])
    with client(acme_key) as acme:
        body = {"name": "docs", "model": "hashing-test", "index": {"type": "exact"}}
        made = acme.post("/v1/collections", json=body)
        assert made.status_code == 201 and made.json()["name"] == "docs", made.text
        assert [c["name"] for c in acme.get("/v1/collections").json()["collections"]] == ["docs"]
        mine = {"id": "acme-1", "text": "acme private note on regular expression groups"}
        job = acme.post("/v1/collections/docs/documents", json={"documents": [mine]}).json()
        _wait_http_job(acme, job["job_id"])
        assert acme.get(f"/v1/jobs/{job['job_id']}").json()["collection"] == "docs"
        assert api_node.get(f"/v1/jobs/{job['job_id']}").status_code == 404
        hits = acme.post("/v1/collections/docs/query", json={"text": QUERIES[2], "k": 5}).json()
        assert [h["document_id"] for h in hits["hits"]] == ["acme-1"]
        assert hits["collection"] == "docs"
        # the default tenant's "docs" is another collection: it never shows acme's document
        theirs = api_node.post("/v1/collections/docs/query", json={"text": mine["text"], "k": 10})
        assert theirs.json()["hits"]
        assert "acme-1" not in {h["document_id"] for h in theirs.json()["hits"]}
        assert api_node.get("/v1/collections/docs/documents/acme-1").status_code == 404
        assert acme.get(f"/v1/collections/docs/documents/{CORPUS[0]['id']}").status_code == 404
        listed = {c["name"] for c in api_node.get("/v1/collections").json()["collections"]}
        assert "docs" in listed and not any(":" in n for n in listed)
        # no name reaches across tenants
        for path in ("/v1/collections/real", "/v1/collections/default:docs"):
            r = acme.get(path)
            assert r.status_code == 404 and "acme" not in r.text, r.text
        assert api_node.get("/v1/collections/acme:docs").status_code == 404
        doc = {"documents": [{"id": "x", "text": "x"}]}
        assert acme.post("/v1/collections/real/documents", json=doc).status_code == 404
        assert acme.post("/v1/collections/real/query", json={"text": "x"}).status_code == 404
        assert acme.get("/v1/collections/real/upgrade").status_code == 404
        # aliases resolve in the tenant too
        alias = acme.post("/v1/aliases", json={"alias": "notes", "collection": "docs"})
        assert alias.status_code == 200, alias.text
        assert acme.get("/v1/aliases").json()["aliases"] == {"notes": "docs"}
        assert "notes" not in api_node.get("/v1/aliases").json()["aliases"]
        cross = acme.post("/v1/aliases", json={"alias": "x", "collection": "real"})
        assert cross.status_code == 404
        # a key granted one collection: that one (and its alias) only
        made = acme.post("/v1/keys", json={"scopes": ["admin"], "collections": ["docs"]})
        assert made.status_code == 201 and made.json()["tenant"] == "acme", made.text
        assert {k["tenant"] for k in acme.get("/v1/keys").json()["keys"]} == {"acme"}
        with client(made.json()["key"]) as granted:
            q = {"text": mine["text"], "k": 1}
            assert granted.post("/v1/collections/notes/query", json=q).status_code == 200
            r = granted.post("/v1/collections", json={"name": "other"})
            assert r.status_code == 403 and "grant" in r.json()["error"]["message"], r.text
            assert granted.delete("/v1/collections/other").status_code == 403
            # it cannot hand out a key for every collection of the tenant
            assert granted.post("/v1/keys", json={"scopes": ["read"]}).status_code == 403
        # rotation keeps tenant, scopes and grants; the old key stops at once (no grace)
        prefix = made.json()["prefix"]
        assert api_node.post(f"/v1/keys/{prefix}/rotate", json={}).status_code == 404
        rotated = acme.post(f"/v1/keys/{prefix}/rotate", json={"grace_s": 0})
        assert rotated.status_code == 201, rotated.text
        assert rotated.json()["tenant"] == "acme" and rotated.json()["collections"] == ["docs"]
        with client(made.json()["key"]) as old, client(rotated.json()["key"]) as new:
            assert old.get("/v1/collections/docs").status_code == 401
            assert new.get("/v1/collections/docs").status_code == 200
        # a key's own request rate: its bucket holds max(1, 0.5/s x 2 s) = 1 request (and may
        # run one request into debt, as on single node)
        slow_key = acme.post("/v1/keys", json={"scopes": ["read"], "rate_rps": 0.5}).json()["key"]
        with client(slow_key) as slow:
            answers = [slow.get("/v1/collections/docs") for _ in range(4)]
        assert answers[0].status_code == 200
        refused = [r for r in answers if r.status_code == 429]
        assert refused and int(refused[0].headers["Retry-After"]) >= 1, answers[-1].text
        assert acme.delete("/v1/aliases/notes").status_code == 200
        assert acme.delete("/v1/collections/docs").status_code == 200
    assert api_node.get("/v1/collections/docs").status_code == 200  # the default one stays


def test_queries_embed_through_the_shared_inference_service(
    local_cluster: LocalCluster, api_node: httpx.Client
) -> None:
    """`serve --cluster ADDR --inference ADDR`: an API node embeds query text through the
    model's Ray Serve deployment on the cluster (inference/serve_ray.py), not a model of its
    own; its answers equal those of an API node embedding locally."""
    from ray import serve

    from embedstack.cli.cluster import serve_query_batcher
    from embedstack.inference.serve_ray import app_name

    router = local_cluster.router
    settings = api_settings(
        local_cluster, inference=local_cluster.cluster.address, inference_replica_cpus=0.0,
        inference_max_replicas=1,
    )  # fmt: skip
    embedder = ServeQueryEmbedder(router, functools.partial(serve_query_batcher, settings, router))
    hooks = list(router.on_round)
    started = time.monotonic()
    try:
        app = create_cluster_app(router, settings, embedder=embedder)
        with (
            serving(app) as url,
            httpx.Client(base_url=url, timeout=120, headers=api_node.headers) as c,
        ):
            for q in QUERIES[:3]:
                for extra in ({"mode": "dense"}, {}):
                    body = {"text": q, "k": 10, **extra}
                    got = c.post("/v1/collections/docs/query", json=body)
                    assert got.status_code == 200, got.text
                    same_hits(
                        got.json(), api_node.post("/v1/collections/docs/query", json=body).json()
                    )
            # POST /v1/embeddings through the same deployment: the API node's own vectors
            body = {"input": QUERIES[:2], "model": "hashing-test"}
            served = c.post("/v1/embeddings", json=body)
            assert served.status_code == 200, served.text
            assert served.json() == api_node.post("/v1/embeddings", json=body).json()
        handle = serve.get_app_handle(app_name("hashing-test"))
        assert handle.embedded.remote().result(timeout_s=30) == 8  # one replica, every text
        print(
            f"6 queries and 2 texts through Ray Serve, deployment included: "
            f"{time.monotonic() - started:.1f} s"
        )
    finally:
        router.on_round[:] = hooks
        serve.shutdown()


def test_upgrade_to_the_real_model_equals_ingesting_with_it(api_node: httpx.Client) -> None:
    """Upgrade a hashing collection of the corpus to the bundled all-MiniLM-L6-v2: after the
    cutover its hits equal those of the collection ingested with that model from the start
    ("real", same documents, exact index), so the replicas' back-fill re-embedded every
    document from its own store."""
    c = api_node
    corpus = CORPUS[:60]
    body = {"name": "grow", "model": "hashing-test", "index": {"type": "exact"}}
    assert c.post("/v1/collections", json=body).status_code == 201
    docs = [{"id": r["id"], "text": r["text"], "metadata": r["metadata"]} for r in corpus]
    job = c.post("/v1/collections/grow/documents", json={"documents": docs}).json()["job_id"]
    _wait_http_job(c, job)
    r = c.post("/v1/collections/grow/upgrade", json={"model": "all-MiniLM-L6-v2"})
    assert r.status_code == 202, r.text
    _wait_state(c, "grow", {"ready"}, timeout=300)
    gate = {"min_overlap": 0.0, "sample_queries": 20}  # unlabeled: texts sampled from the shards
    r = c.post("/v1/collections/grow/upgrade/cutover", json={"gate": gate})
    assert r.status_code == 200, r.text
    assert r.json()["report"]["mode"] == "overlap" and r.json()["report"]["queries"] == 20
    grown = c.get("/v1/collections/grow").json()
    assert grown["model"] == "all-MiniLM-L6-v2" and grown["vectors"] == grown["chunks"]
    for q in QUERIES[:4]:  # dense: the upgraded store also holds the old space's text, which
        # bm25's statistics count (as on single node), so hybrid scores differ a little
        body = {"text": q, "k": 10, "mode": "dense"}
        got = c.post("/v1/collections/grow/query", json=body).json()
        want = c.post("/v1/collections/real/query", json=body).json()
        assert got["space_id"] == want["space_id"]
        assert [h["document_id"] for h in got["hits"]] == [h["document_id"] for h in want["hits"]]
        for a, b in zip(got["hits"], want["hits"], strict=True):
            assert abs(a["score"] - b["score"]) < 1e-4
    assert c.delete("/v1/collections/grow").status_code == 200


@pytest.fixture(scope="module")
def single_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[httpx.Client]:
    """A real single-node server (hashing model) the cluster's answers are compared with."""
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    server = Server(tmp_path_factory.mktemp("single-writes"), env).start()
    try:
        with httpx.Client(base_url=server.url, timeout=60) as client:
            yield client
    finally:
        server.stop()


def same_error(cluster: httpx.Response, single: httpx.Response) -> None:
    """The single node's 4xx: same status, same message."""
    assert 400 <= single.status_code < 500, (single.request.content[:300], single.text)
    assert cluster.status_code == single.status_code, (cluster.text, single.text)
    assert cluster.json()["error"]["message"] == single.json()["error"]["message"]


def both(clients: tuple[httpx.Client, httpx.Client], method: str, path: str, **kw: Any) -> Any:
    return tuple(c.request(method, path, **kw) for c in clients)


VEC_DIM = 16


def _vectors(n: int, seed: int) -> Any:
    import numpy as np

    return np.random.default_rng(seed).standard_normal((n, VEC_DIM)).astype(np.float32)


def _npy(array: Any) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_bulk_vectors_through_the_log_equal_single_node(
    api_node: httpx.Client, single_node: httpx.Client
) -> None:
    """POST vectors on an API node (JSON base64 and multipart .npy): through the log, applied by
    every replica unembedded; the same hits as single node on the same vectors (flat index),
    with and without a filter; a bad body gets the single node's 4xx and message."""
    import numpy as np

    pair = (api_node, single_node)
    body = {"name": "vecs", "dim": VEC_DIM, "metric": "cosine", "index": {"type": "exact"}}
    for r in both(pair, "POST", "/v1/collections", json=body):
        assert r.status_code == 201, r.text
    vecs = _vectors(200, 7)
    ids, texts = [f"v{i}" for i in range(200)], [f"vector number {i}" for i in range(200)]
    metas = [{"group": i % 5} for i in range(200)]
    as_json = {"ids": ids[:100], "vectors": base64.b64encode(vecs[:100].tobytes()).decode(),
               "texts": texts[:100], "metadata": metas[:100]}  # fmt: skip
    meta = json.dumps({"ids": ids[100:], "texts": texts[100:], "metadata": metas[100:]})
    files = {"vectors": ("v.npy", _npy(vecs[100:]), "application/x-npy")}
    for c in pair:
        for kw in ({"json": as_json}, {"files": files, "data": {"meta": meta}}):
            r = c.post("/v1/collections/vecs/vectors", **kw)
            assert r.status_code == 202 and r.json()["documents"] == 100, r.text
            assert wait_job(c, r.json()["job_id"], timeout=120)["status"] == "done"
    described = api_node.get("/v1/collections/vecs").json()
    assert described["documents"] == described["vectors"] == described["chunks"] == 200
    got = api_node.get("/v1/collections/vecs/documents/v150").json()
    assert got["text"] == texts[150] and got["metadata"] == metas[150] and got["indexed"]
    top = api_node.post("/v1/collections/vecs/query", json={"vector": vecs[3].tolist(), "k": 1})
    assert top.json()["hits"][0]["document_id"] == "v3"
    assert abs(top.json()["hits"][0]["score"] - 1.0) < 1e-5
    for i, q in enumerate(_vectors(6, 8)):
        query: dict[str, Any] = {"vector": q.tolist(), "k": 10}
        if i % 2:
            query["filter"] = {"group": 2}
        got_q, want_q = both(pair, "POST", "/v1/collections/vecs/query", json=query)
        assert got_q.status_code == want_q.status_code == 200, got_q.text
        same_hits(got_q.json(), want_q.json())
        assert got_q.json()["hits"]

    nan = np.full((1, VEC_DIM), np.nan, np.float32)
    b64 = lambda a: base64.b64encode(np.asarray(a, np.float32).tobytes()).decode()  # noqa: E731
    one = {"ids": ["x"], "vectors": b64(vecs[:1])}
    bad: list[dict[str, Any]] = [
        {"json": {"ids": [], "vectors": ""}},
        {"json": {"ids": ["a", "a"], "vectors": b64(vecs[:2])}},
        {"json": {"ids": ["a"], "vectors": "not base64!"}},
        {"json": {"ids": ["a", "b"], "vectors": b64(vecs[:1])}},
        {"json": {**one, "texts": ["a", "b"]}},
        {"json": {"ids": ["x"], "vectors": b64(nan)}},
        {"json": {"ids": ["x"], "vectors": b64(np.zeros((1, VEC_DIM)))}},
        {"json": {**one, "space_id": "sp_other"}},
        {"json": {**one, "metadata": [functools.reduce(lambda v, _: {"k": v}, range(20), {})]}},
        {"json": {"ids": "x", "vectors": 5}},
        {"content": b"{not json", "headers": {"content-type": "application/json"}},
        {"content": b"ids=x", "headers": {"content-type": "text/plain"}},
        {"files": {"vectors": ("v.npy", _npy(vecs[:2]), "application/x-npy")}},
        {"files": {"vectors": ("v.npy", b"garbage", "application/x-npy")},
         "data": {"meta": json.dumps({"ids": ["a"]})}},
        {"files": {"vectors": ("v.npy", _npy(vecs[:2]), "application/x-npy")},
         "data": {"meta": json.dumps({"ids": ["a"]})}},
        {"files": {"vectors": ("v.npy", _npy(np.ones((1, VEC_DIM), np.int32)), "x")},
         "data": {"meta": json.dumps({"ids": ["a"]})}},
        {"files": {"vectors": ("v.npy", _npy(vecs[:1]), "application/x-npy")},
         "data": {"meta": "{broken"}},
    ]  # fmt: skip
    for kw in bad:
        same_error(*both(pair, "POST", "/v1/collections/vecs/vectors", **kw))
    assert api_node.post("/v1/collections/nope/vectors", json=one).status_code == 404


def test_records_as_on_single_node(api_node: httpx.Client, single_node: httpx.Client) -> None:
    """POST records on an API node: the template (set at creation, as on single node) makes
    documents, rejected records are counted in the 202 and listed with the job (a request of
    rejections only still gets a job, done at once); the same hits as single node; the
    single node's 4xx for bad requests."""
    pair = (api_node, single_node)
    template = {"id": "sku", "text": ["title", "body"], "metadata": ["brand"]}
    body = {"name": "recs", "model": "hashing-test", "index": {"type": "exact"},
            "record": template}  # fmt: skip
    plain = {"name": "plain", "model": "hashing-test", "index": {"type": "exact"}}
    for b in (body, plain):
        for r in both(pair, "POST", "/v1/collections", json=b):
            assert r.status_code == 201, r.text
    assert api_node.get("/v1/collections/recs").json()["record"] == template | {"separator": "\n"}
    records: list[Any] = [
        {"sku": f"s{i}", "title": f"product {i}", "body": _doc(i)["text"], "brand": f"b{i % 3}"}
        for i in range(60)
    ]
    records += [["not", "an object"], {"title": "no id"}, {"sku": "s1", "title": "again"},
                {"sku": "blank", "title": " ", "body": ""}]  # fmt: skip
    answers = []
    for c in pair:
        r = c.post("/v1/collections/recs/records", json={"records": records})
        assert r.status_code == 202, r.text
        answers.append((r.json(), wait_job(c, r.json()["job_id"], timeout=120)))
    (cluster, cluster_job), (single, single_job) = answers
    assert (cluster["documents"], cluster["rejected"]) == (single["documents"], single["rejected"])
    assert cluster["rejected"] == 4 and cluster_job["status"] == "done"
    assert cluster_job["rejected"] == single_job["rejected"]
    assert cluster_job["rejected"][0]["where"] == "records[60]"
    only_bad = api_node.post("/v1/collections/recs/records", json={"records": [[1]]})
    assert only_bad.status_code == 202 and only_bad.json()["documents"] == 0
    job = wait_job(api_node, only_bad.json()["job_id"], timeout=30)
    assert job["status"] == "done" and len(job["rejected"]) == 1  # type: ignore[arg-type]
    assert api_node.get("/v1/collections/recs/documents/s7").json()["metadata"] == {"brand": "b1"}
    for q in [*QUERIES[:2], "product 7"]:  # dense: single node's bm25 spans its whole store
        got, want = both(pair, "POST", "/v1/collections/recs/query",
                         json={"text": q, "k": 5, "mode": "dense"})  # fmt: skip
        same_hits(got.json(), want.json())
    too_many = [{"sku": str(i)} for i in range(Settings().max_documents_per_request + 1)]
    for path, b in (
        ("/v1/collections/plain/records", {"records": records[:2]}),
        ("/v1/collections/recs/records", {"records": []}),
        ("/v1/collections/recs/records", {"records": too_many}),
        ("/v1/collections/recs/records", {"records": "x"}),
        ("/v1/collections/recs/records", {"items": []}),
        ("/v1/collections/vecs/records", {"records": records[:2]}),
    ):
        same_error(*both(pair, "POST", path, json=b))
    one = {"ids": ["x"], "vectors": base64.b64encode(bytes(4 * 384)).decode()}
    same_error(*both(pair, "POST", "/v1/collections/recs/vectors", json=one))


def test_patch_changes_settings_on_every_replica(
    api_node: httpx.Client, single_node: httpx.Client, local_cluster: LocalCluster
) -> None:
    """PATCH of a collection on an API node: query defaults apply to the next query; an index
    change is rebuilt by every replica (`rebuilding` until each has, then each serves HNSW);
    the single node's answers and 4xx."""
    pair = (api_node, single_node)
    body = {"name": "tune", "model": "hashing-test", "index": {"type": "exact"}}
    docs = [_doc(i) for i in range(80)]
    for c in pair:
        assert c.post("/v1/collections", json=body).status_code == 201
        r = c.post("/v1/collections/tune/documents", json={"documents": docs})
        assert wait_job(c, r.json()["job_id"], timeout=120)["status"] == "done"
    got, want = both(pair, "PATCH", "/v1/collections/tune", json={"search": {"mode": "lexical"}})
    assert got.status_code == want.status_code == 202, got.text
    CollectionOut.model_validate(got.json())
    assert got.json()["search"] == want.json()["search"] and got.json()["rebuilding"] is False
    assert api_node.get("/v1/collections/tune").json()["search"]["mode"] == "lexical"
    q = {"text": docs[3]["text"], "k": 5}
    got, want = both(pair, "POST", "/v1/collections/tune/query", json=q)
    # (not the single node's scores: its bm25 statistics span every collection of its store)
    assert got.json()["mode"] == want.json()["mode"] == "lexical"
    assert got.json()["hits"][0]["document_id"] == want.json()["hits"][0]["document_id"] == "d3"

    index = {"index": {"type": "hnsw", "M": 8}, "search": {"mode": None}}
    got, want = both(pair, "PATCH", "/v1/collections/tune", json=index)
    assert got.status_code == want.status_code == 202, got.text
    assert got.json()["rebuilding"] is True
    assert got.json()["index"] == want.json()["index"] and got.json()["index"]["type"] == "hnsw"
    assert got.json()["search"] == want.json()["search"]
    deadline = time.monotonic() + 60
    while api_node.get("/v1/collections/tune").json()["rebuilding"]:
        assert time.monotonic() < deadline, "the replicas did not rebuild in 60 s"
        time.sleep(0.1)
    space = got.json()["space_id"]
    statuses = replica_statuses(local_cluster.router, "tune")
    assert len(statuses) == SHARDS * REPLICAS
    assert {st["stats"]["indexes"][space] for st in statuses.values()} == {"hnsw"}
    described = api_node.get("/v1/collections/tune").json()
    assert described["index"]["type"] == "hnsw" and described["last_rebuild_error"] is None
    assert described["vectors"] == 80
    time.sleep(0.5)  # the single node's rebuild runs in its background
    for q_text in QUERIES[:3]:
        got, want = both(pair, "POST", "/v1/collections/tune/query",
                         json={"text": q_text, "k": 10, "mode": "dense"})  # fmt: skip
        assert got.json()["mode"] == want.json()["mode"] == "dense"
        assert [h["document_id"] for h in got.json()["hits"]][:3] == [
            h["document_id"] for h in want.json()["hits"]
        ][:3] or _ties(got.json()["hits"], want.json()["hits"])
    for b in (
        {},
        {"index": {"type": "nope"}},
        {"index": {"type": "hnsw", "M": "many"}},
        {"index": {"type": "ivf_pq", "m": 7}},
        {"search": {"mode": "weird"}},
        {"search": {"alpha": 7}},
        {"color": "red"},
        [],
    ):
        same_error(*both(pair, "PATCH", "/v1/collections/tune", json=b))
    assert api_node.patch("/v1/collections/nope", json={"search": {}}).status_code == 404


def test_query_params_reach_every_replica(
    api_node: httpx.Client, local_cluster: LocalCluster
) -> None:
    """A query's `params` (per-query index knobs) are checked on the API node against the
    collection's index type (422 before any fan-out) and searched with by every shard's replica:
    ivf_flat at nprobe 1 of 8 lists misses neighbours, nprobe=8 returns the exact top k (dense
    and through the fused path); a replica handed a bad knob refuses it as a plain 422 error."""
    import numpy as np

    from embedstack.errors import InvalidInput

    n, k = 2000, 10
    ivf = {"type": "ivf_flat", "nlist": 8, "nprobe": 1, "recall_floor": 0, "train_min": 350}
    body = {"name": "knobs", "dim": VEC_DIM, "metric": "l2", "index": ivf}
    assert api_node.post("/v1/collections", json=body).status_code == 201
    try:
        vecs, queries = _vectors(n, 11), _vectors(8, 12)
        for start in (0, 1000):
            part = {"ids": [f"v{i}" for i in range(start, start + 1000)],
                    "vectors": base64.b64encode(vecs[start : start + 1000].tobytes()).decode()}  # fmt: skip
            r = api_node.post("/v1/collections/knobs/vectors", json=part)
            assert r.status_code == 202, r.text
            assert wait_job(api_node, r.json()["job_id"], timeout=120)["status"] == "done"
        dist = ((queries[:, None, :] - vecs[None, :, :]) ** 2).sum(-1)
        truth = [[f"v{j}" for j in np.argsort(row)[:k]] for row in dist]

        def ids(q: Any, **extra: Any) -> list[str]:
            r = api_node.post("/v1/collections/knobs/query",
                              json={"vector": q.tolist(), "k": k, **extra})  # fmt: skip
            assert r.status_code == 200, r.text
            return [h["document_id"] for h in r.json()["hits"]]

        default = [ids(q) for q in queries]
        recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(default, truth, strict=True)])
        assert recall < 0.9, recall  # every shard's index trained and searches 1 list of 8
        assert [ids(q, params={"nprobe": 8}) for q in queries] == truth
        fused = {"group_by": "document", "doc_scoring": "max_sum", "params": {"nprobe": 8}}
        assert [ids(q, **fused) for q in queries[:3]] == truth[:3]  # one chunk a document
        for extra, words in (({"params": {"ef_search": 64}}, "valid: nprobe"),
                             ({"ef_search": 64}, "valid: nprobe"),
                             ({"params": {"nprobe": 0}}, "nprobe"),
                             ({"params": {"nprobe": "8"}}, "integer")):  # fmt: skip
            r = api_node.post("/v1/collections/knobs/query",
                              json={"vector": queries[0].tolist(), **extra})  # fmt: skip
            assert r.status_code == 422 and words in r.json()["error"]["message"], r.text
        router = local_cluster.router
        coll = router.catalog.resolve("knobs")
        with pytest.raises(InvalidInput, match="valid: nprobe"):
            router.search(coll, coll.space_id, queries[0], k, None, False, {"ef_search": 8})
    finally:
        api_node.delete("/v1/collections/knobs")  # later tests count every collection's shards


def test_embeddings_equal_single_node(api_node: httpx.Client, single_node: httpx.Client) -> None:
    """POST /v1/embeddings on an API node (no inference service: its own model behind the
    single-node batcher): the single node's vectors, usage and 4xx/429; with the bundled model,
    the vectors of stored texts find those documents in a collection the replicas embedded."""
    import numpy as np

    pair = (api_node, single_node)
    texts = [QUERIES[0], "ünïcode text ✓", "long " * 300]

    def vectors(out: dict[str, Any]) -> Any:
        items = [d["embedding"] for d in out["data"]]
        if isinstance(items[0], str):
            return np.stack([np.frombuffer(base64.b64decode(s), "<f4") for s in items])
        return np.asarray(items, np.float32)

    for body in (
        {"input": texts},
        {"input": texts[0]},
        {"input": texts, "encoding_format": "base64"},
        {"input": texts[:2], "model": "hashing-test-b", "dimensions": 384},
    ):
        got, want = both(pair, "POST", "/v1/embeddings", json=body)
        assert got.status_code == want.status_code == 200, got.text
        EmbeddingsOut.model_validate(got.json())
        assert got.json()["model"] == want.json()["model"]
        assert got.json()["usage"] == want.json()["usage"]
        np.testing.assert_allclose(vectors(got.json()), vectors(want.json()), atol=1e-6)
    limit = Settings().max_inputs_per_embedding_request
    for body in (
        {"input": []},
        {"input": "   "},
        {"input": ["ok", ""]},
        {"input": 5},
        {"input": "x", "dimensions": 3},
        {"input": ["a"] * (limit + 1)},
        {"input": "x" * (Settings().max_document_chars + 1)},
        {"input": "x", "model": "no-such-model"},
        {"input": "x", "encoding_format": "hex"},
    ):
        same_error(*both(pair, "POST", "/v1/embeddings", json=body))
    # admission: a budget the batcher cannot meet is a 429 with Retry-After, as on single node
    hurry = {"X-Request-Budget-Ms": "0.001"}
    got, want = both(pair, "POST", "/v1/embeddings", json={"input": texts}, headers=hurry)
    assert got.status_code == want.status_code == 429, got.text
    assert int(got.headers["Retry-After"]) >= 1

    real = {"name": "emb-real", "model": "all-MiniLM-L6-v2", "index": {"type": "exact"}}
    assert api_node.post("/v1/collections", json=real).status_code == 201
    sentences = ["The cat sat on the warm mat.", "Sockets carry bytes between hosts.",
                 "Regular expressions match patterns in text.", "A thread runs code at once."]  # fmt: skip
    docs = [{"id": f"e{i}", "text": t} for i, t in enumerate(sentences)]
    r = api_node.post("/v1/collections/emb-real/documents", json={"documents": docs})
    assert wait_job(api_node, r.json()["job_id"], timeout=300)["status"] == "done"
    body = {"input": sentences, "model": "all-MiniLM-L6-v2"}
    out = api_node.post("/v1/embeddings", json=body).json()
    space = api_node.get("/v1/collections/emb-real").json()["space_id"]
    for doc, vec in zip(docs, vectors(out), strict=True):
        query = {"vector": vec.tolist(), "space_id": space, "k": 1, "mode": "dense"}
        top = api_node.post("/v1/collections/emb-real/query", json=query).json()["hits"][0]
        assert top["document_id"] == doc["id"] and top["score"] > 0.999, top
    assert api_node.delete("/v1/collections/emb-real").status_code == 200


def test_malformed_and_huge_bodies_on_the_write_routes_are_4xx(
    local_cluster: LocalCluster, api_node: httpx.Client
) -> None:
    """An API node with a 4 KiB body limit: bodies over it (declared or chunked), broken JSON,
    deep nesting, wrong types and content types on every route of cluster_writes.py are 4xx
    with a message, never a 500."""
    router = local_cluster.router
    for body in (
        {"name": "vecs", "dim": VEC_DIM, "metric": "cosine", "index": {"type": "exact"}},
        {"name": "recs", "model": "hashing-test",
         "record": {"id": "sku", "text": ["title"], "metadata": []}},
        {"name": "tune", "model": "hashing-test"},
    ):  # fmt: skip
        assert api_node.post("/v1/collections", json=body).status_code in (201, 409)
    hooks = list(router.on_round)
    try:
        app = create_cluster_app(router, api_settings(local_cluster, max_body_bytes=4096))
        with (
            serving(app) as url,
            httpx.Client(base_url=url, timeout=60, headers=api_node.headers) as c,
        ):

            def chunked() -> Iterator[bytes]:
                yield b'{"input": ["'
                for _ in range(100):
                    yield b"a" * 100
                yield b'"]}'

            js = {"content-type": "application/json"}
            attempts: list[dict[str, Any]] = [
                {"content": b"[" + b"1," * 4000 + b"1]", "headers": js},
                {"content": chunked(), "headers": js},
                {"content": b"{not json", "headers": js},
                {"content": b"\xff\xfe\x00\x01", "headers": js},
                {"content": b"[" * 1900 + b"]" * 1900, "headers": js},
                {"json": []},
                {"json": "a string"},
                {"json": {"ids": ["a"], "vectors": "AAAA", "records": [{}], "input": [["a"]],
                          "index": {"type": 1}, "search": {"mode": 3}}},
                {"content": b"--x\r\nbroken", "headers": {
                    "content-type": "multipart/form-data; boundary=x"}},
                {"content": b"\x93NUMPY", "headers": {"content-type": "application/x-npy"}},
            ]  # fmt: skip
            for method, path in (
                ("POST", "/v1/collections/vecs/vectors"),
                ("POST", "/v1/collections/recs/records"),
                ("PATCH", "/v1/collections/tune"),
                ("POST", "/v1/embeddings"),
            ):
                for kw in attempts:
                    r = c.request(method, path, **kw)
                    assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
                    assert r.json()["error"]["message"]
                r = c.request(method, path, content=b"x" * 5000, headers=js)
                assert r.status_code == 413 and "4096-byte limit" in r.text
    finally:
        router.on_round[:] = hooks
        for name in ("vecs", "recs", "plain", "tune"):  # the node tests that follow move less
            assert api_node.delete(f"/v1/collections/{name}").status_code in (200, 404)


def _samples(text: str) -> list[Any]:
    """Every sample of a Prometheus text exposition (prometheus_client's own parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def _value(samples: list[Any], name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    return sum(
        s.value
        for s in samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _obs_collection(c: httpx.Client) -> list[dict[str, Any]]:
    """The collection "obs" (hashing model, exact index) with 40 one-chunk documents."""
    docs = [_doc(i) for i in range(1000, 1040)]
    if c.get("/v1/collections/obs").status_code == 404:
        body = {"name": "obs", "model": "hashing-test", "index": {"type": "exact"}}
        assert c.post("/v1/collections", json=body).status_code == 201
        job = c.post("/v1/collections/obs/documents", json={"documents": docs}).json()["job_id"]
        _wait_http_job(c, job)
    return docs


def test_metrics_stats_and_dashboard_on_an_api_node(
    local_cluster: LocalCluster, api_node: httpx.Client
) -> None:
    """/metrics parses and carries the API node's request, router and embedding metrics and
    the replicas' gauges; stats count every shard once; the dashboard and its history serve."""
    from embedstack.serving.responses import HistoryOut, StatsOut

    c = api_node
    docs = _obs_collection(c)
    for d in docs[:6]:
        r = c.post("/v1/collections/obs/query", json={"text": d["text"], "k": 3})
        assert r.status_code == 200 and len(r.json()["query_id"]) == 32, r.text
        assert r.json()["hits"][0]["document_id"] == d["id"]
    text = c.get("/metrics")
    assert text.status_code == 200, text.text
    got = _samples(text.text)
    query = {"route": "/v1/collections/{name}/query", "method": "POST", "status": "200"}
    assert _value(got, "embedstack_http_request_duration_seconds_count", **query) >= 6
    for shard in map(str, range(SHARDS)):  # every query reached every shard at least once
        calls = _value(got, "embedstack_cluster_shard_calls_total", collection="obs", shard=shard)
        assert calls >= 6, (shard, calls)
    assert _value(got, "embedstack_cluster_scatter_seconds_count", collection="obs") >= 6
    embeds = _value(got, "embedstack_cluster_query_embed_seconds_count", model="hashing-test")
    assert embeds >= 6
    # the replicas' gauges: every placed replica holds its shard's documents, applied all of
    # its partition (lag 0) and indexes one vector per (one-chunk) document
    expected = {s: 0 for s in range(SHARDS)}
    for d in docs:
        expected[shard_of(d["id"], SHARDS)] += 1
    held = [s for s in got if s.name == "embedstack_cluster_replica_documents"
            and s.labels["collection"] == "obs"]  # fmt: skip
    assert len(held) == SHARDS * REPLICAS
    for s in held:
        assert s.value == expected[int(s.labels["shard"])], s
        replica = {k: s.labels[k] for k in ("collection", "shard", "node")}
        assert _value(got, "embedstack_cluster_replica_log_lag", **replica) == 0
        assert _value(got, "embedstack_cluster_replica_log_position", **replica) > 0
        assert _value(got, "embedstack_cluster_replica_vectors", **replica) == s.value
        assert _value(got, "embedstack_cluster_replica_index_bytes", **replica) > 0
    # stats: the single-node model, vectors summed over one replica per shard
    stats = c.get("/v1/collections/obs/stats")
    assert stats.status_code == 200, stats.text
    StatsOut.model_validate(stats.json())
    (space,) = stats.json()["spaces"]
    assert space["active"] and space["index_type"] == "exact"
    assert space["vectors"] == sum(expected.values()) == len(docs)
    assert space["vectors"] == c.get("/v1/collections/obs").json()["vectors"]
    assert space["feedback"]["queries"] >= 6 and space["drift"]["baseline_queries"] >= 6
    # the dashboard: the single-node page (open), its history from this node's sampler
    page = httpx.get(f"{c.base_url}/dashboard", timeout=30)
    assert (
        page.status_code == 200 and "connect-src 'self'" in page.headers["content-security-policy"]
    )
    history = c.get("/v1/metrics/history")
    assert history.status_code == 200, history.text
    assert HistoryOut.model_validate(history.json()).samples


def rendered_dom(url: str, key: str, tmp_path: Path) -> str:
    """The DOM of an API node's /dashboard after its scripts ran in headless Chromium (the
    key in the URL fragment, as a user would pass it)."""
    import subprocess

    from embedstack.testing import CHROMIUM, ensure_binary

    browser = ensure_binary(CHROMIUM, "chromium")
    return subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
         f"--user-data-dir={tmp_path / 'dom-profile'}", "--virtual-time-budget=3000",
         "--dump-dom", f"{url}/dashboard#key={key}"],
        capture_output=True, timeout=120, text=True,
    ).stdout  # fmt: skip


@contextlib.contextmanager
def other_api_node(
    local_cluster: LocalCluster, settings: Settings, headers: Any
) -> Iterator[httpx.Client]:
    """Another API node of the module's cluster: its own router (and metrics), app and port,
    the same catalog; leaving the block stops it."""
    router = ClusterRouter(
        local_cluster.router.catalog, ShardLog(local_cluster.bootstrap), RayNodes(),
        local_cluster.factory(), "hashing-test",
    )  # fmt: skip
    router.wait_for_nodes(3)
    router.start(period=0.5)
    try:
        with (
            serving(create_cluster_app(router, settings)) as url,
            httpx.Client(base_url=url, timeout=60, headers=headers) as client,
        ):
            yield client
    finally:
        router.stop()


def test_feedback_and_drift_baseline_are_shared_by_api_nodes(
    local_cluster: LocalCluster, api_node: httpx.Client, tmp_path: Path
) -> None:
    """Feedback on a query one API node answered is taken by another, is seen by both, and
    survives a restart of the one that took it; the drift baseline is shared: filled by the
    queries of any node, reset by any node for every node."""
    c = api_node
    docs = _obs_collection(c)
    settings = api_settings(
        local_cluster, drift_baseline_queries=20, drift_window_queries=20, history_interval_s=0.5
    )
    answered = c.post("/v1/collections/obs/query", json={"text": docs[7]["text"], "k": 5}).json()
    qid, second = answered["query_id"], answered["hits"][1]["document_id"]
    with other_api_node(local_cluster, settings, c.headers) as b:
        r = b.post("/v1/feedback", json={"query_id": qid, "document_id": second})
        assert r.status_code == 200 and r.json()["rank"] == 2, r.text
        # drift: a new shared baseline (reset on node A), filled by node B's queries
        assert c.post("/v1/collections/obs/drift/baseline").status_code == 200
        for d in docs[:20]:
            body = {"text": d["text"], "mode": "dense"}
            assert b.post("/v1/collections/obs/query", json=body).is_success
        drift = b.get("/v1/collections/obs/stats").json()["spaces"][0]["drift"]
        assert drift["state"] == "collecting window" and drift["baseline_queries"] == 20
        # unlike the baseline (the corpus' own texts, top-1 score 1.0), the window's
        # queries are words no document has: node B sees the drift
        for i in range(20):
            body = {"text": f"zz{i} unseen vocabulary {i * 7919}", "mode": "dense"}
            assert b.post("/v1/collections/obs/query", json=body).is_success
        drift = b.get("/v1/collections/obs/stats").json()["spaces"][0]["drift"]
        assert drift["state"] == "drift" and drift["alert"], drift
        assert drift["psi"]["top1_score"] >= 0.25
        alert = _value(_samples(b.get("/metrics").text), "embedstack_drift_alert",
                       collection="obs")  # fmt: skip
        assert alert == 1
        # the dashboard, rendered by headless Chromium: this node's history plotted in SVG
        dom = rendered_dom(str(b.base_url), b.headers["Authorization"].split()[1], tmp_path)
        assert "<svg" in dom and "<polyline" in dom, dom[-2000:]
        # a reset on node A starts a new baseline for node B too
        assert c.post("/v1/collections/obs/drift/baseline").status_code == 200
        drift = b.get("/v1/collections/obs/stats").json()["spaces"][0]["drift"]
        assert drift["state"] == "collecting baseline" and drift["baseline_queries"] == 0
    # node B is gone: its feedback is in the catalog, seen by node A and by a restarted B
    fb = c.get("/v1/collections/obs/stats").json()["spaces"][0]["feedback"]
    assert fb["clicked"] >= 1 and fb["clicked_mrr"] is not None and fb["clicked_mrr"] <= 1.0
    with other_api_node(local_cluster, settings, c.headers) as b:
        assert b.get("/v1/collections/obs/stats").json()["spaces"][0]["feedback"] == fb
        top = answered["hits"][0]["document_id"]
        r = b.post("/v1/feedback", json={"query_id": qid, "document_id": top})
        assert r.status_code == 200 and r.json()["rank"] == 1
        after = b.get("/v1/collections/obs/stats").json()["spaces"][0]["feedback"]
        assert after["clicked"] == fb["clicked"]  # the same query, clicked higher up
        assert after["clicked_mrr"] > fb["clicked_mrr"]


def test_audit_and_tenant_scoping_on_api_nodes(
    local_cluster: LocalCluster, api_node: httpx.Client
) -> None:
    """Key and collection writes (and refusals) are in the audit log of their tenant, newest
    first, on every API node; another tenant sees neither those entries, nor the default
    tenant's stats, nor its queries' feedback."""
    from embedstack.serving.responses import AuditOut

    c = api_node
    docs = _obs_collection(c)
    made = c.post("/v1/keys", json={"scopes": ["read"], "name": "audited"})
    assert made.status_code == 201
    prefix = made.json()["prefix"]
    assert c.post("/v1/collections", json={"name": "audited", "model": "hashing-test"}).is_success
    assert c.delete("/v1/collections/audited").status_code == 200
    with httpx.Client(
        base_url=str(c.base_url),
        timeout=30,
        headers={"Authorization": f"Bearer {made.json()['key']}"},
    ) as reader:
        assert reader.post("/v1/collections", json={"name": "nope"}).status_code == 403
        assert reader.post("/v1/collections/obs/drift/baseline").status_code == 403
    listed = c.get("/v1/audit", params={"limit": 50})
    assert listed.status_code == 200, listed.text
    entries = AuditOut.model_validate(listed.json()).entries
    ids = [e.id for e in entries]
    assert ids == sorted(ids, reverse=True)
    actions = [(e.action, e.collection, e.status, e.key) for e in entries]
    me = c.headers["Authorization"].split("_")[1]  # the fixture's admin key: es_<prefix>_...
    assert ("POST /v1/keys", None, 201, me) in actions
    assert next(e for e in entries if e.action == "POST /v1/keys").detail["key"] == prefix
    assert ("POST /v1/collections", "audited", 201, me) in actions
    assert ("DELETE /v1/collections/{name}", "audited", 200, me) in actions
    assert ("POST /v1/collections", None, 403, prefix) in actions  # refused by the gate
    assert all(e.tenant == "default" for e in entries)
    older = c.get("/v1/audit", params={"limit": 2, "before": ids[0]}).json()["entries"]
    assert [e["id"] for e in older] == ids[1:3]
    # another tenant: its own entries only; the default tenant's stats and queries are unknown
    acme_key, _ = local_cluster.router.catalog.keys().create_key(tenant="acme", scopes=["admin"])
    qid = c.post("/v1/collections/obs/query", json={"text": docs[0]["text"]}).json()["query_id"]
    with httpx.Client(
        base_url=str(c.base_url), timeout=30, headers={"Authorization": f"Bearer {acme_key}"}
    ) as acme:
        assert acme.post("/v1/keys", json={"scopes": ["read"]}).status_code == 201
        theirs = acme.get("/v1/audit").json()["entries"]
        assert theirs and {e["tenant"] for e in theirs} == {"acme"}
        assert not {e["id"] for e in theirs} & set(ids)
        assert acme.get("/v1/collections/obs/stats").status_code == 404
        assert acme.post("/v1/collections/obs/drift/baseline").status_code == 404
        r = acme.post("/v1/feedback", json={"query_id": qid, "document_id": docs[0]["id"]})
        assert r.status_code == 404, r.text
        assert acme.get("/metrics").status_code == 403  # every tenant's names: operator only
    assert c.post("/v1/feedback", json={"query_id": qid, "document_id": docs[0]["id"]}).is_success


def test_malformed_feedback_and_baseline_requests_are_4xx(api_node: httpx.Client) -> None:
    c = api_node
    docs = _obs_collection(c)
    answered = c.post("/v1/collections/obs/query", json={"text": docs[1]["text"]}).json()
    qid, doc = answered["query_id"], answered["hits"][0]["document_id"]
    bad: list[tuple[Any, int]] = [
        ({}, 422),
        ({"query_id": qid}, 422),
        ({"query_id": 5, "document_id": doc}, 422),
        ({"query_id": qid, "document_id": doc, "kind": "like"}, 422),
        ({"query_id": qid, "document_id": doc, "kind": "grade", "grade": 7}, 422),
        ({"query_id": qid, "document_id": doc, "extra": 1}, 422),
        ({"query_id": qid, "document_id": doc, "kind": "grade"}, 422),  # no grade
        ({"query_id": qid, "document_id": doc, "grade": 2}, 422),  # a click has no grade
        ({"query_id": qid, "document_id": "not-a-hit"}, 422),
        ({"query_id": "0" * 32, "document_id": doc}, 404),
        ({"query_id": "x" * 100_000, "document_id": doc}, 404),
        ([1, 2, 3], 422),
    ]
    for body, status in bad:
        r = c.post("/v1/feedback", json=body)
        assert r.status_code == status, (body if len(str(body)) < 200 else "long", r.text[:300])
        assert "error" in r.json()
    r = c.post("/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422
    for name, status in (("missing", 404), ("default:obs", 404), ("a" * 300, 404)):
        r = c.post(f"/v1/collections/{name}/drift/baseline")
        assert r.status_code == status, (name, r.text)
    r = c.post("/v1/collections/obs/drift/baseline", content=b"\x00garbage")
    assert r.status_code == 200  # the route takes no body (as on single node): it is ignored
    graded = {"query_id": qid, "document_id": doc, "kind": "grade", "grade": 0}
    assert c.post("/v1/feedback", json=graded).json()["recorded"] == "grade"


def test_kill_a_node_during_an_upgrade_backfill(
    local_cluster: LocalCluster, api_node: httpx.Client
) -> None:
    """kill -9 of a whole node (its Ray node removed ungracefully: every process on it dies)
    while the shards back-fill an upgrade's shadow space: its shards' new replicas on the
    survivors start from snapshots taken mid-back-fill and finish it, the upgrade reaches ready,
    the cutover serves the new space; then the node comes back."""
    c = api_node
    docs = [_doc(i) for i in range(1000, 1300)]
    made = c.post("/v1/collections", json={"name": "up-kill", "model": "hashing-test"})
    assert made.status_code == 201, made.text
    job = c.post("/v1/collections/up-kill/documents", json={"documents": docs}).json()["job_id"]
    _wait_http_job(c, job)
    labeled = [{"query": d["text"], "document_id": d["id"]} for d in docs[:100:4]]
    body = {"model": "hashing-test-b", "eval": labeled, "gate": {"k": 5}}
    r = c.post("/v1/collections/up-kill/upgrade", json=body)
    assert r.status_code == 202 and r.json()["state"] == "backfilling", r.text
    local_cluster.cluster.remove_node(local_cluster.nodes.pop("n2"), allow_graceful=False)
    try:
        at_kill = c.get("/v1/collections/up-kill/upgrade").json()
        print(f"upgrade at the kill: {at_kill['state']} {at_kill['done']}/{at_kill['total']}")
        st = _wait_state(c, "up-kill", {"ready"}, timeout=180)
        assert st["done"] == st["total"] == 300
        r = c.post("/v1/collections/up-kill/upgrade/cutover", json={})
        assert r.status_code == 200 and r.json()["report"]["passed"], r.text
        described = c.get("/v1/collections/up-kill").json()
        assert described["space_id"] == st["to_space"] and described["vectors"] == 300
        hit = c.post("/v1/collections/up-kill/query", json={"text": docs[7]["text"], "k": 1})
        assert hit.json()["space_id"] == st["to_space"]
        assert hit.json()["hits"][0]["document_id"] == docs[7]["id"]
    finally:
        local_cluster.add("n2")  # Ray restarts its actor, which reopens its replicas
        local_cluster.router.wait_for_nodes(3)
        c.delete("/v1/collections/up-kill")


def test_kill_a_node_during_queries_and_ingest(local_cluster: LocalCluster) -> None:
    router = local_cluster.router
    failures: list[str] = []
    latencies: list[float] = []
    stop = threading.Event()

    def query_loop() -> None:
        i = 0
        while not stop.is_set():
            started = time.monotonic()
            try:
                router.query("docs", text=QUERIES[i % len(QUERIES)], k=5)
            except Exception as exc:
                failures.append(repr(exc))
            latencies.append(time.monotonic() - started)
            i += 1

    extra = [
        {"id": f"new-{i}", "text": f"freshly added note number {i} about files", "metadata": {}}
        for i in range(120)
    ]
    jobs = []
    reader = threading.Thread(target=query_loop)
    reader.start()
    try:
        jobs.append(router.put_documents("docs", rows(extra[:40])))
        time.sleep(1.0)
        local_cluster.cluster.remove_node(local_cluster.nodes.pop("n2"), allow_graceful=False)
        for start in (40, 80):  # ingest continues while n2 is dead
            jobs.append(router.put_documents("docs", rows(extra[start : start + 40])))
            time.sleep(1.0)
        for job in jobs:
            wait_cluster_job(router, job)  # done = every live placed replica applied it
        time.sleep(2.0)
    finally:
        stop.set()
        reader.join(timeout=60)
    print(f"queries {len(latencies)}, failed {len(failures)}, max latency {max(latencies):.2f} s")
    assert not failures, failures[:3]
    assert len(latencies) > 20
    calls = _samples(generate_latest(router.metrics.registry).decode())
    outcomes = {o: _value(calls, "embedstack_cluster_shard_calls_total", collection="docs",
                          outcome=o) for o in ("ok", "error", "timeout")}  # fmt: skip
    retries = _value(calls, "embedstack_cluster_shard_retries_total", collection="docs")
    print(f"router shard calls on docs: {outcomes}, retried {retries}")
    # no query failed: each failed or timed-out shard call was retried on another replica
    assert retries == outcomes["error"] + outcomes["timeout"]
    # a query never waits on a dead replica longer than the replica timeout (plus slack for a
    # loaded box): the worst query saw at most one timeout per shard in parallel
    assert max(latencies) < router.replica_timeout * 2 + 5.0
    # no acknowledged document lost: every shard's live replicas hold all of its documents
    everything = CORPUS + extra
    expected = {s: 0 for s in range(SHARDS)}
    for r in everything:
        expected[shard_of(str(r["id"]), SHARDS)] += 1
    held = shard_documents(router, "docs")
    assert {s for _, s in held} == set(range(SHARDS))
    for shard in range(SHARDS):
        placed = placed_on(router, "docs", router.refresh().live)[shard]
        assert all(held.get((n, shard)) == expected[shard] for n in placed), (shard, held)

    # the node comes back: Ray restarts its actor, which reopens its replicas from their
    # snapshot + position; they catch up from the log and take their shards back
    local_cluster.add("n2")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        held = shard_documents(router, "docs")
        home = placed_on(router, "docs", ["n0", "n1", "n2"])
        back = {s: held.get(("n2", s)) for s in range(SHARDS) if "n2" in home[s]}
        if back and all(back[s] == expected[s] for s in back):
            break
        time.sleep(0.5)
    assert back and all(back[s] == expected[s] for s in back), back


def test_add_a_node_moves_only_reassigned_shards(local_cluster: LocalCluster) -> None:
    router = local_cluster.router
    router.wait_for_nodes(3)
    before = placed_on(router, "docs", ["n0", "n1", "n2"])
    after = placed_on(router, "docs", ["n0", "n1", "n2", "n3"])
    # what adding n3 must build, over every collection: only their reassigned shard replicas
    expected_moves = sum(
        moves(
            place(c.shards, ["n0", "n1", "n2"], c.replicas, c.topic),
            place(c.shards, ["n0", "n1", "n2", "n3"], c.replicas, c.topic),
        )
        for c in router.catalog.list()
    )
    failures: list[str] = []
    stop = threading.Event()

    def query_loop() -> None:
        while not stop.is_set():
            try:
                router.query("docs", text=QUERIES[1], k=5)
            except Exception as exc:
                failures.append(repr(exc))

    reader = threading.Thread(target=query_loop)
    reader.start()
    try:
        moves_before = router.moves
        local_cluster.add("n3")
        local_cluster.start_actor("n3")
        router.wait_for_nodes(4)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            held = {k for k in shard_documents(router, "docs")}
            if held == {(n, s) for s, ns in after.items() for n in ns}:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        reader.join(timeout=60)
    assert held == {(n, s) for s, ns in after.items() for n in ns}
    # shard transfer: each new replica started from a snapshot of a live replica of its shard
    # at a log offset (the records before it were never read from the log) and holds what
    # the others hold
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        states = replica_statuses(router, "docs")
        counts = {k: int(v["documents"]) for k, v in states.items()}
        new = [k for k in states if k[0] == "n3"]
        if all(counts[k] == max(c for (_, s), c in counts.items() if s == k[1]) for k in new):
            break
        time.sleep(0.5)
    assert new, "n3 took no replica of docs"
    for key in new:
        transfer = states[key]["transfer"]
        assert transfer is not None and transfer["source"] != "n3", states[key]
        assert transfer["position"] > 0 and transfer["bytes"] > 0
        # sent in pieces of PIECE bytes, checked against the source's sha256
        assert transfer["pieces"] == -(-transfer["bytes"] // PIECE) > 1, transfer
        assert len(transfer["sha256"]) == 64
        others = [c for (n, s), c in counts.items() if s == key[1] and n != "n3"]
        assert others and all(counts[key] == c for c in others), (key, counts)
    print("transfers:", {f"{n}/{s}": states[(n, s)]["transfer"] for n, s in new})
    # only the reassigned shard replicas were built (on the new node), and nothing else moved
    assert router.moves - moves_before == expected_moves
    assert {n for s in after for n in set(after[s]) - set(before[s])} <= {"n3"}
    assert not failures, failures[:3]
