"""Federated regions with data residency, proven on a real local federation: a Ray cluster of 4
simulated nodes (2 in region eu, 2 in us; a us node's region is its Ray node label
embedstack.io/region, an eu node's its Ray resource es_region_*: both kinds are read), a
Kafka-protocol broker per region (tansu), one Redis catalog, a gateway actor per region and a
federated API node served over HTTP on loopback.

Documents of both regions are ingested and queried; then every node's store and index files and
every broker's topics are read byte by byte: no text, metadata or vector of one region exists
anywhere in the other. The API node's byte counters show only the policy's kinds crossed. Then
region us is lost (nodes and broker): what needs it fails with 503 naming it, eu keeps serving.

One federation for the module; the tests run in order."""

from __future__ import annotations

import functools
import os
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from embedstack.cluster.federation import FederatedRouter
from embedstack.cluster.ray.node import node_resource
from embedstack.cluster.ray.nodes import start_node_actor
from embedstack.cluster.ray.regions import (
    RegionMap,
    region_labels,
    region_resource,
    start_gateway,
)
from embedstack.config import Settings
from embedstack.infra.local import LocalProcess, start_kafka
from embedstack.obs.metrics import Metrics
from embedstack.serving.federation_app import (
    FederatedCollectionOut,
    FederatedDocumentOut,
    FederatedQueryOut,
    create_federation_app,
)
from embedstack.serving.responses import JobOut
from embedstack.serving.services import build_models

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REGIONS = {"eu": ["eu0", "eu1"], "us": ["us0", "us1"]}
PREFIX = "fedtest"
MARK = {"eu": "EUXRESIDENTX", "us": "USXRESIDENTX"}  # in every text of that region
META = {"eu": "EUXMETAX", "us": "USXMETAX"}  # in every metadata of that region
TOPICS = ["kettle", "bicycle", "garden", "invoice", "weather", "guitar"]
N = 24  # documents per region


@dataclass
class Federation:
    cluster: Any
    nodes: dict[str, Any]  # node name -> ray node
    brokers: dict[str, LocalProcess]
    root: Path
    router: FederatedRouter
    client: httpx.Client | None = None


def _wait(what: str, check: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout:.0f} s")
        time.sleep(0.2)


@pytest.fixture(scope="module")
def fed(
    tmp_path_factory: pytest.TempPathFactory, redis_broker: LocalProcess
) -> Iterator[Federation]:
    import redis
    from ray.cluster_utils import Cluster

    root = tmp_path_factory.mktemp("federation")
    brokers = {r: start_kafka(root / f"kafka-{r}") for r in REGIONS}
    catalog_url = f"redis://{redis_broker.address}/3"
    client = redis.Redis.from_url(catalog_url)
    client.flushdb()
    settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=root)
    factory = functools.partial(build_models, settings, {})

    def node(region: str, name: str) -> dict[str, Any]:
        """A node of `region`: the us nodes carry the region as a Ray node label, the eu ones
        as the custom resource (nodes started without labels): both are read."""
        if region == "us":
            return {"num_cpus": 1, "resources": {node_resource(name): 1},
                    "labels": region_labels(region)}  # fmt: skip
        return {"num_cpus": 1, "resources": {node_resource(name): 1, region_resource(region): 1}}

    head = {
        **node("eu", "eu0"), "include_dashboard": False,
        # a lost node is declared dead within seconds, not Ray's default half minute
        "_system_config": {"health_check_period_ms": 500, "health_check_failure_threshold": 10},
    }  # fmt: skip
    cluster = Cluster(initialize_head=True, head_node_args=head)
    nodes = {"eu0": cluster.head_node}
    try:
        for region, names in REGIONS.items():
            for name in names:
                if name not in nodes:
                    nodes[name] = cluster.add_node(**node(region, name))
        ray.init(address=cluster.address, namespace="embedstack-tests")
        gateways = {}
        for region, names in REGIONS.items():
            for name in names:  # a node reads and writes its own region's broker only
                start_node_actor(name, str(root / "nodes"), brokers[region].address, factory)
            gateways[region] = start_gateway(
                region, catalog_url, PREFIX, brokers[region].address, factory, "hashing-test",
                replica_timeout=3.0, period=0.3,
            )  # fmt: skip
        for region, gateway in gateways.items():
            _wait(
                f"both nodes of {region}",
                lambda g=gateway: len(ray.get(g.nodes.remote(), timeout=180)) == 2,
                240,
            )
        regions = RegionMap()
        router = FederatedRouter(
            client, gateways, regions.live_regions, factory(), "hashing-test", Metrics(),
            timeout=10.0, prefix=PREFIX,
        )  # fmt: skip
        yield Federation(cluster, nodes, brokers, root / "nodes", router)
    finally:
        ray.shutdown()
        cluster.shutdown()
        for broker in brokers.values():
            broker.stop()


@pytest.fixture(scope="module")
def api(fed: Federation) -> Iterator[httpx.Client]:
    """The federated API node's app (what `serve --cluster --queue eu=...,us=...` runs), served
    by uvicorn on a loopback port in this process, with an admin key from the catalog."""
    import uvicorn

    settings = Settings(
        enable_test_models=True, default_model="hashing-test", cluster_shards=2,
        cluster_replicas=2, data_dir=fed.root,
    )  # fmt: skip
    app = create_federation_app(fed.router, settings)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    _wait("the API node", lambda: server.started, 30)
    admin, _ = fed.router.keys().create_key(scopes=["admin"], name="tests")
    headers = {"Authorization": f"Bearer {admin}"}
    port = sock.getsockname()[1]
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60, headers=headers) as c:
        yield c
    server.should_exit = True
    thread.join(timeout=30)


def _done(c: httpx.Client, job_id: str) -> dict[str, Any] | None:
    job = c.get(f"/v1/jobs/{job_id}")
    assert job.status_code == 200, job.text
    JobOut.model_validate(job.json())
    return job.json() if job.json()["status"] == "done" else None


def docs(region: str) -> list[dict[str, Any]]:
    return [
        {
            "id": f"{region}-doc-{i:03d}",
            "text": f"{MARK[region]}{i:03d} notes about the {TOPICS[i % len(TOPICS)]} and "
            f"the {TOPICS[(i * 5 + 1) % len(TOPICS)]} kept by the {region} office",
            "metadata": {"region": region, "owner": f"{META[region]}{i:03d}"},
        }
        for i in range(N)
    ]


def bytes_crossed(c: httpx.Client) -> dict[tuple[str, str, str], float]:
    """embedstack_region_payload_bytes_total from the API node's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    resp = c.get("/metrics")
    assert resp.status_code == 200, resp.text
    out = {}
    for family in text_string_to_metric_families(resp.text):
        for s in family.samples:
            if s.name == "embedstack_region_payload_bytes_total":
                out[(s.labels["from_region"], s.labels["to_region"], s.labels["kind"])] = s.value
    return out


def crossing(counts: dict[tuple[str, str, str], float]) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for (a, b, kind), value in counts.items():
        if a != b and value > 0:
            out.setdefault((a, b), set()).add(kind)
    return out


def query(c: httpx.Client, name: str, **body: Any) -> httpx.Response:
    return c.post(f"/v1/collections/{name}/query", json={"k": 10, **body})


def test_policy_and_documents_are_validated(api: httpx.Client) -> None:
    def create(name: str, residency: dict[str, Any]) -> httpx.Response:
        body = {"name": name, "index": {"type": "exact"}, "residency": residency}
        return api.post("/v1/collections", json=body)

    bad = create("bad", {"regions": ["eu", "us"], "crossing": ["ids", "scores", "vectors"]})
    assert bad.status_code == 422 and "vectors never leave" in bad.text
    bad = create("bad", {"regions": ["eu", "ap"]})
    assert bad.status_code == 422 and "eu, us" in bad.text, bad.text
    made = create("private", {"regions": ["eu", "us"], "field": "region"})
    assert made.status_code == 201, made.text
    assert made.json()["residency"]["crossing"] == ["ids", "scores"]
    made = create("shared", {"regions": ["eu", "us"], "crossing": ["text"]})
    assert made.status_code == 201, made.text
    assert made.json()["residency"]["crossing"] == ["ids", "scores", "text"]

    for meta, why in (({}, "has no metadata 'region'"), ({"region": "ap"}, "names region 'ap'")):
        doc = {"id": "x", "text": "a kettle", "metadata": meta}
        resp = api.post("/v1/collections/private/documents", json={"documents": [doc]})
        assert resp.status_code == 422, resp.text
        assert why in resp.text and "eu, us" in resp.text, resp.text


def test_ingest_and_query_across_regions(fed: Federation, api: httpx.Client) -> None:
    for name in ("private", "shared"):
        for region in REGIONS:
            body = {"documents": docs(region)}
            resp = api.post(
                f"/v1/collections/{name}/documents", json=body, params={"region": region}
            )
            assert resp.status_code == 202, resp.text
            job = _wait("the job", lambda r=resp: _done(api, r.json()["job_id"]), 180)
            assert set(job["result"]["regions"]) == {region}  # written in its region only
    want = {r: {"documents": N, "vectors": N} for r in REGIONS}
    _wait("counts", lambda: api.get("/v1/collections/private").json()["regions"] == want, 30)
    FederatedCollectionOut.model_validate(api.get("/v1/collections/private").json())

    # a region-local query reads its region only and nothing crosses a border
    before = bytes_crossed(api)
    local = query(api, "private", text="notes about the kettle", region="eu", regions=["eu"])
    assert local.status_code == 200, local.text
    hits = local.json()["hits"]
    assert len(hits) == 10 and {h["region"] for h in hits} == {"eu"}
    assert all(h["text"].startswith(MARK["eu"]) and h["metadata"]["region"] == "eu" for h in hits)
    assert crossing(bytes_crossed(api)) == crossing(before)

    # a federated query: the caller's region in full, the other one as ids and scores only
    for caller, other in (("eu", "us"), ("us", "eu")):
        resp = query(api, "private", text="notes about the garden", region=caller, k=2 * N)
        assert resp.status_code == 200, resp.text
        FederatedQueryOut.model_validate(resp.json())  # the declared response model
        hits = resp.json()["hits"]
        assert {h["region"] for h in hits} == {"eu", "us"}
        assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
        for h in hits:
            assert h["document_id"].startswith(h["region"])
            if h["region"] == other:
                assert "text" not in h and "metadata" not in h, h
            else:
                assert h["text"].startswith(MARK[caller]), h
    # a caller of no region (the API node has none either) gets the crossing kinds everywhere
    resp = query(api, "private", text="notes about the garden", k=2 * N)
    assert resp.status_code == 200, resp.text
    assert all(
        set(h) == {"document_id", "chunk_id", "score", "region"} for h in resp.json()["hits"]
    )
    assert resp.json()["caller"] == "client"
    crossed = crossing(bytes_crossed(api))
    for region in REGIONS:  # the query text goes out (embedded there), ids and scores come back
        assert crossed.pop(("client", region)) == {"query_text"}
        assert crossed.pop((region, "client")) == {"ids", "scores"}
    assert crossed == {("eu", "us"): {"ids", "scores", "query_text"},
                       ("us", "eu"): {"ids", "scores", "query_text"}}, crossed  # fmt: skip

    # a query vector stays in its caller's region: refused for another (422 naming the fix),
    # answered by the caller's region alone with nothing crossing
    vector = query(
        api, "private", text="notes about the kettle", region="eu", regions=["eu"], mode="dense"
    )
    vec = fed.router.models.get("hashing-test").embed_batch(["notes about the kettle"])[0]
    before = bytes_crossed(api)
    own = {"vector": vec.tolist(), "space_id": vector.json()["space_id"], "region": "eu"}
    resp = query(api, "private", **own)
    assert resp.status_code == 422 and "send 'text'" in resp.text, resp.text
    assert "'regions': ['eu']" in resp.text, resp.text
    resp = query(api, "private", **own, regions=["eu"])
    assert resp.status_code == 200, resp.text
    got, want = resp.json()["hits"], vector.json()["hits"]  # the region embedded the same
    assert [h["document_id"] for h in got] == [h["document_id"] for h in want]
    assert [h["score"] for h in got] == pytest.approx([h["score"] for h in want], abs=1e-5)
    assert crossing(bytes_crossed(api)) == crossing(before)

    # the collection whose policy lets text cross: text crosses, metadata still does not
    resp = query(api, "shared", text="notes about the guitar", region="eu", k=2 * N)
    assert resp.status_code == 200, resp.text
    foreign = [h for h in resp.json()["hits"] if h["region"] == "us"]
    assert foreign and all(h["text"].startswith(MARK["us"]) for h in foreign)
    assert all("metadata" not in h for h in foreign)
    counts = bytes_crossed(api)
    assert crossing(counts)[("us", "eu")] == {"ids", "scores", "query_text", "text"}
    assert crossing(counts)[("eu", "us")] == {"ids", "scores", "query_text"}
    # no vector crossed a border, neither a stored one nor a query's
    assert not any("vector" in kind or kind == "metadata" for (a, b, kind) in counts if a != b)
    assert any("vector" in kind for (a, b, kind) in counts if a == b)  # the counter sees them
    print("payload bytes per (from, to, kind):", {k: int(v) for k, v in sorted(counts.items())})

    # latency of a region-local query vs a fan-out to both regions (printed, never asserted)
    for label, extra in (("region-local (eu)", {"regions": ["eu"]}), ("eu + us", {})):
        took = []
        for i in range(20):
            started = time.perf_counter()
            text = f"notes about the {TOPICS[i % len(TOPICS)]}"
            assert query(api, "private", text=text, region="eu", **extra).status_code == 200
            took.append((time.perf_counter() - started) * 1000)
        took.sort()
        print(f"{label}: p50 {took[10]:.1f} ms, p90 {took[18]:.1f} ms over 20 HTTP queries "
              f"(load average {os.getloadavg()[0]:.1f})")  # fmt: skip


def test_get_a_document_across_regions(api: httpx.Client) -> None:
    def get(name: str, doc: str, caller: str) -> dict[str, Any]:
        resp = api.get(f"/v1/collections/{name}/documents/{doc}", params={"region": caller})
        assert resp.status_code == 200, resp.text
        return FederatedDocumentOut.model_validate(resp.json()).model_dump(exclude_none=True)

    own = get("private", "eu-doc-001", "eu")
    assert own["region"] == "eu" and own["text"].startswith(MARK["eu"])
    assert own["metadata"]["owner"].startswith(META["eu"])
    assert set(get("private", "eu-doc-001", "us")) == {"document_id", "region", "collection"}
    assert set(get("shared", "eu-doc-001", "us")) == {"document_id", "region", "collection", "text"}
    missing = api.get("/v1/collections/private/documents/nope", params={"region": "eu"})
    assert missing.status_code == 404, missing.text
    # a delete goes through the document's region's log, in that region only
    gone = api.delete("/v1/collections/shared/documents/us-doc-002")
    assert gone.status_code == 200, gone.text
    lost = api.get("/v1/collections/shared/documents/us-doc-002", params={"region": "us"})
    assert lost.status_code == 404
    assert api.delete("/v1/collections/shared/documents/us-doc-002").status_code == 404
    counts = bytes_crossed(api)
    assert not any(kind == "metadata" for (a, b, kind) in counts if a != b)


def test_lexical_hybrid_and_aliases_across_regions(api: httpx.Client) -> None:
    """Lexical and hybrid queries read every region (each fuses its own shards, the API node
    merges by score; a foreign hit is still ids and scores only); an alias names a federated
    collection for queries."""
    before = bytes_crossed(api)
    word = "bicycle"
    want = {d["id"] for r in REGIONS for d in docs(r) if word in d["text"]}
    resp = query(api, "private", text=word, mode="lexical", region="eu", k=2 * N)
    assert resp.status_code == 200, resp.text
    body = FederatedQueryOut.model_validate(resp.json())
    assert body.mode == "lexical" and {h.document_id for h in body.hits} == want
    assert {h.region for h in body.hits} == {"eu", "us"}
    assert all(h.text is None and h.metadata is None for h in body.hits if h.region == "us")
    resp = query(api, "private", text="notes about the guitar", mode="hybrid", region="us")
    assert resp.status_code == 200, resp.text
    hits = resp.json()["hits"]
    assert resp.json()["mode"] == "hybrid" and len(hits) == 10
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    assert all(set(h) == {"document_id", "chunk_id", "score", "region"}
               for h in hits if h["region"] == "eu")  # fmt: skip
    now = bytes_crossed(api)
    crossed = crossing({key: v - before.get(key, 0.0) for key, v in now.items()})
    assert crossed == {("eu", "us"): {"ids", "scores", "query_text"},
                       ("us", "eu"): {"ids", "scores", "query_text"}}, crossed  # fmt: skip

    assert api.post("/v1/aliases", json={"alias": "priv", "collection": "private"}).is_success
    assert api.get("/v1/aliases").json() == {"aliases": {"priv": "private"}}
    body_ = {"text": "notes about the kettle", "region": "eu", "mode": "dense"}
    via = query(api, "priv", **body_)
    assert via.status_code == 200 and via.json()["collection"] == "private", via.text
    assert via.json()["hits"] == query(api, "private", **body_).json()["hits"]
    taken = api.post("/v1/aliases", json={"alias": "shared", "collection": "private"})
    assert taken.status_code == 409, taken.text
    assert api.delete("/v1/aliases/priv").json() == {"deleted": "priv"}
    assert query(api, "priv", **body_).status_code == 404


def _files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file()]


def _grep(files: list[Path], needles: list[bytes]) -> set[bytes]:
    found = set()
    for path in files:
        data = path.read_bytes()
        found |= {n for n in needles if n in data}
    return found


def _chunk_vectors(files: list[Path]) -> dict[str, bytes]:
    """document id -> its (one) chunk's vector, from the store files among `files` (the same
    document in both collections has the same vector)."""
    out = {}
    for path in files:
        if path.name == "store.db":
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
                out.update(db.execute("SELECT document_id, vector FROM chunks").fetchall())
    return out


def _topic_bytes(broker: LocalProcess) -> bytes:
    """Every message of every topic on `broker`, concatenated (keys and values)."""
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": broker.address, "group.id": "inspect",
                         "enable.auto.commit": False})  # fmt: skip
    out = []
    try:
        meta = consumer.list_topics(timeout=10)
        for topic, info in meta.topics.items():
            for p in info.partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
                if high <= low:
                    continue
                consumer.assign([TopicPartition(topic, p, low)])
                seen = low
                deadline = time.monotonic() + 30
                while seen < high and time.monotonic() < deadline:
                    for msg in consumer.consume(100, 1.0):
                        if msg.error() is None:
                            out += [msg.key() or b"", msg.value() or b""]
                            seen = max(seen, (msg.offset() or 0) + 1)
                assert seen >= high, f"{topic}/{p}: read to {seen} of {high}"
    finally:
        consumer.close()
    return b"".join(out)


def test_no_data_of_one_region_in_the_other(fed: Federation, api: httpx.Client) -> None:
    files = {r: [f for n in names for f in _files(fed.root / n)] for r, names in REGIONS.items()}
    vectors = {r: _chunk_vectors(fs) for r, fs in files.items()}
    for region, other in (("eu", "us"), ("us", "eu")):
        # positive control: the region's own markers, metadata and vectors are in its files
        own = [MARK[region].encode(), META[region].encode()]
        assert _grep(files[region], own) == set(own)
        assert set(vectors[region]) == {f"{region}-doc-{i:03d}" for i in range(N)}
        assert _grep(files[region], list(vectors[region].values())[:3])  # the grep sees vectors
        # nothing of the other region: no text, no metadata, no vector, no document id
        theirs = [MARK[other].encode(), META[other].encode(), *vectors[other].values()]
        assert not _grep(files[region], theirs), f"{other} data found on {region} nodes"
        assert not _grep(files[region], [f"{other}-doc-{i:03d}".encode() for i in range(N)])
        # the region's broker has its own documents and none of the other's
        log = _topic_bytes(fed.brokers[region])
        assert MARK[region].encode() in log and META[region].encode() in log
        assert MARK[other].encode() not in log and META[other].encode() not in log
        # each region's live indexes (in memory; on disk only as snapshots) hold its own
        # documents only: every id a region-local query can reach, and the vector counts
        resp = query(api, "private", text="notes", region=region, regions=[region], k=4 * N)
        assert {h["document_id"] for h in resp.json()["hits"]} == set(vectors[region])
        counts = api.get("/v1/collections/private").json()["regions"]
        assert counts[region] == {"documents": N, "vectors": N}
    # the shared catalog (collections, jobs, keys) holds no document data of either region
    catalog = _redis_bytes(fed.router._r)
    assert b"private" in catalog  # positive control: collection entries were read
    assert not any(m.encode() in catalog for m in (*MARK.values(), *META.values()))


def test_query_params_reach_the_regions(fed: Federation, api: httpx.Client) -> None:
    """A query's `params` are checked by the federated API node against the collection's index
    type (422 before anything crosses) and reach every shard replica of the regions read:
    ivf_flat at its own nprobe 1 of 4 lists misses neighbours, nprobe=4 finds the exact top k."""
    import numpy as np

    ivf = {"type": "ivf_flat", "nlist": 4, "nprobe": 1, "recall_floor": 0, "train_min": 200}
    body = {"name": "knobs", "index": ivf, "residency": {"regions": ["eu", "us"]}}
    assert api.post("/v1/collections", json=body).status_code == 201
    try:
        rng = np.random.default_rng(5)
        words = [f"w{i}" for i in range(400)]
        texts = [" ".join(rng.choice(words, 6)) for _ in range(1000)]
        for start in (0, 500):
            part = [{"id": f"k{i}", "text": texts[i], "metadata": {"region": "eu"}}
                    for i in range(start, start + 500)]  # fmt: skip
            resp = api.post("/v1/collections/knobs/documents", json={"documents": part})
            assert resp.status_code == 202, resp.text
            _wait("the job", lambda r=resp: _done(api, r.json()["job_id"]), 180)
        model = fed.router.models.get("hashing-test")

        def unit(rows: list[str]) -> Any:
            v = np.asarray(model.embed_batch(rows), np.float64)
            return v / np.linalg.norm(v, axis=1, keepdims=True)

        asked = [" ".join(rng.choice(words, 6)) for _ in range(5)]
        exact = -np.sort(-(unit(asked) @ unit(texts).T), axis=1)  # cosine, best first

        def scores(text: str, **extra: Any) -> list[float]:
            resp = query(api, "knobs", text=text, region="eu", regions=["eu"], mode="dense",
                         **extra)  # fmt: skip
            assert resp.status_code == 200, resp.text
            return [h["score"] for h in resp.json()["hits"]]

        every = np.array([scores(t, params={"nprobe": 4}) for t in asked])
        assert np.allclose(every, exact[:, :10], atol=1e-5), (every, exact[:, :10])
        default = np.array([scores(t) for t in asked])
        assert not np.allclose(default, exact[:, :10], atol=1e-5)  # 1 list of 4 per shard
        for extra, words_ in (({"params": {"ef_search": 64}}, "valid: nprobe"),
                              ({"params": {"nprobe": -1}}, "nprobe")):  # fmt: skip
            resp = query(api, "knobs", text=asked[0], region="eu", regions=["eu"], **extra)
            assert resp.status_code == 422 and words_ in resp.json()["error"]["message"]
    finally:
        api.delete("/v1/collections/knobs")  # later tests list every collection


def _redis_bytes(client: Any) -> bytes:
    """Every key and value (strings and hashes: what the catalog writes) of the test's DB."""
    out = []
    for key in client.scan_iter("*"):
        kind = client.type(key)
        if kind == b"string":
            out += [key, client.get(key) or b""]
        elif kind == b"hash":
            out += [key, *(b for kv in client.hgetall(key).items() for b in kv)]
        else:
            out.append(key)
    return b"".join(out)


def test_tenants_see_only_their_own_collections(fed: Federation, api: httpx.Client) -> None:
    """A key of tenant acme: its collection names live in its tenant (stored "acme:NAME"), it
    never sees the default tenant's collections, aliases or jobs; the admin never sees its."""
    key, _ = fed.router.keys().create_key("acme", scopes=["admin"], name="acme")
    acme = httpx.Client(base_url=str(api.base_url), timeout=60,
                        headers={"Authorization": f"Bearer {key}"})  # fmt: skip
    with acme:
        assert acme.get("/v1/collections").json() == {"collections": []}
        assert acme.get("/v1/collections/private").status_code == 404
        assert query(acme, "private", text="notes", region="eu").status_code == 404
        body = {"name": "private", "index": {"type": "exact"}, "residency": {"regions": ["eu"]}}
        made = acme.post("/v1/collections", json=body)
        assert made.status_code == 201 and made.json()["name"] == "private", made.text
        doc = {"id": "acme-1", "text": "acme notes about the kettle", "metadata": {"region": "eu"}}
        resp = acme.post("/v1/collections/private/documents", json={"documents": [doc]})
        assert resp.status_code == 202, resp.text
        job = resp.json()["job_id"]
        assert _wait("acme's job", lambda: _done(acme, job), 120)["collection"] == "private"
        assert api.get(f"/v1/jobs/{job}").status_code == 404  # another tenant's job
        hits = query(acme, "private", text="notes about the kettle", region="eu").json()["hits"]
        assert [h["document_id"] for h in hits] == ["acme-1"]
        assert acme.post("/v1/aliases", json={"alias": "mine", "collection": "private"}).is_success
        assert acme.get("/v1/aliases").json() == {"aliases": {"mine": "private"}}
        assert api.get("/v1/aliases").json() == {"aliases": {}}
        names = [c["name"] for c in api.get("/v1/collections").json()["collections"]]
        assert "private" in names and not any("acme" in n for n in names)
        assert acme.delete("/v1/collections/private").status_code == 200
    assert api.get("/v1/collections/private").status_code == 200  # the admin's is untouched


def test_a_document_moved_to_another_region_leaves_the_old_one(api: httpx.Client) -> None:
    """Re-ingested with another region, a document is deleted from its old region once the new
    one logged it: the job waits for both, and the old region's store and index lose it."""
    doc = {"id": "eu-doc-005", "text": "moved to us: notes about the kettle",
           "metadata": {"region": "us"}}  # fmt: skip
    body = {"documents": [doc]}
    resp = api.post("/v1/collections/shared/documents", json=body, params={"region": "us"})
    assert resp.status_code == 202, resp.text
    job = _wait("the move", lambda: _done(api, resp.json()["job_id"]), 120)
    assert set(job["result"]["regions"]) == {"us"} and set(job["result"]["moved"]) == {"eu"}
    got = api.get("/v1/collections/shared/documents/eu-doc-005", params={"region": "us"})
    assert got.status_code == 200 and got.json()["region"] == "us", got.text
    assert got.json()["text"].startswith("moved to us")
    eu = query(api, "shared", text="notes about the kettle", region="eu", regions=["eu"], k=4 * N)
    ids = {h["document_id"] for h in eu.json()["hits"]}
    assert "eu-doc-005" not in ids and len(ids) == N - 1  # the eu index no longer has it
    want = {"eu": {"documents": N - 1, "vectors": N - 1}, "us": {"documents": N, "vectors": N}}
    _wait("counts", lambda: api.get("/v1/collections/shared").json()["regions"] == want, 30)


def test_delete_a_federated_collection(api: httpx.Client) -> None:
    assert api.delete("/v1/collections/shared").json() == {"deleted": "shared"}
    assert api.get("/v1/collections/shared").status_code == 404
    names = [c["name"] for c in api.get("/v1/collections").json()["collections"]]
    assert names == ["private"]


def test_a_region_keeps_serving_after_losing_one_node(fed: Federation, api: httpx.Client) -> None:
    """RF 2 inside the region: with the us node running the region's gateway gone, Ray
    restarts the gateway on the other us node and us answers in full again."""
    where = ray.get(fed.router.gateways["us"].ray_node.remote(), timeout=30)
    name = next(n for n in REGIONS["us"] if fed.nodes[n].node_id == where)
    fed.cluster.remove_node(fed.nodes.pop(name), allow_graceful=False)
    survivor = next(n for n in REGIONS["us"] if n != name)

    def moved() -> bool:  # the old process may linger a moment after its node is gone
        try:
            node = ray.get(fed.router.gateways["us"].ray_node.remote(), timeout=10)
        except Exception:
            return False  # restarting
        return bool(node == fed.nodes[survivor].node_id)

    _wait("the us gateway restarted on the other us node", moved, 180)

    def answered() -> list[dict[str, Any]] | None:
        resp = query(api, "private", text="notes", region="us", regions=["us"], k=4 * N)
        return resp.json()["hits"] if resp.status_code == 200 else None

    hits = _wait("region us answering on its last node", answered, 120)
    assert {h["document_id"] for h in hits} == {f"us-doc-{i:03d}" for i in range(N)}


def test_losing_a_region(fed: Federation, api: httpx.Client) -> None:
    for name in [n for n in REGIONS["us"] if n in fed.nodes]:  # the last us node
        fed.cluster.remove_node(fed.nodes.pop(name), allow_graceful=False)
    fed.brokers["us"].kill()

    def refused() -> httpx.Response | None:
        resp = query(api, "private", text="notes about the kettle", region="eu")
        return resp if resp.status_code != 200 else None

    resp = _wait("a 503 for the lost region", refused, 90)
    assert resp.status_code == 503 and "region us unavailable" in resp.text, resp.text
    # region eu keeps serving: its region-local queries and writes
    local = query(api, "private", text="notes about the kettle", region="eu", regions=["eu"])
    assert local.status_code == 200, local.text
    assert len(local.json()["hits"]) == 10
    new = {"id": "eu-new", "text": "a late note on the kettle", "metadata": {"region": "eu"}}
    resp = api.post("/v1/collections/private/documents", json={"documents": [new]})
    assert resp.status_code == 202, resp.text
    _wait("the eu job", lambda: _done(api, resp.json()["job_id"]), 120)
    resp = api.delete("/v1/collections/private/documents/eu-doc-003")  # it might be in us too
    assert resp.status_code == 503 and "region us unavailable" in resp.text, resp.text
    lost = {"id": "us-new", "text": "a late note", "metadata": {"region": "us"}}
    resp = api.post("/v1/collections/private/documents", json={"documents": [lost]})
    assert resp.status_code == 503 and "region us unavailable" in resp.text, resp.text
    lost_us = {"eu": True, "us": False}
    _wait("region us seen down", lambda: api.get("/readyz").json()["regions"] == lost_us, 90)
    assert api.get("/readyz").status_code == 200  # region eu serves
