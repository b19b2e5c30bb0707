"""Per-query index search parameters (`params` in a query body) through real HTTP: they reach the
index on every path (dense, filtered, grouped, hybrid), and bad ones are a 422 naming the fix."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from embedstack.client import AsyncClient, Client
from embedstack.testing import EMBEDSTACK
from tests.conftest import Server, server_env, wait_job

N, DIM, NLIST, K = 2000, 16, 16, 10
QUERIES = 20
# nprobe 1 of 16 lists, no recall gate raising it: the configured search misses neighbours on
# structureless data, and nprobe=NLIST scans every list (an exact search)
IVF = {"type": "ivf_flat", "nlist": NLIST, "nprobe": 1, "recall_floor": 0, "train_min": 1000}
# PQ codes of 4 bytes re-ranked from 1 x k float candidates: coarse unless a query asks for more
PQ = {"type": "ivf_pq", "nlist": 8, "nprobe": 1, "m": 4, "nbits": 4, "refine_factor": 1,
      "recall_floor": 0, "train_min": 1000}  # fmt: skip


def _vectors(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


BASE, QS = _vectors(0, N), _vectors(1, QUERIES)


def _exact(queries: np.ndarray, allowed: np.ndarray | None = None) -> list[list[str]]:
    """Ids of the exact top K by L2 (among `allowed` rows)."""
    rows = np.arange(N) if allowed is None else allowed
    d = ((queries[:, None, :] - BASE[None, rows, :]) ** 2).sum(-1)
    return [[f"v{rows[j]}" for j in np.argsort(r)[:K]] for r in d]


@pytest.fixture(scope="module")
def c(hashing_server: Server) -> httpx.Client:
    client = hashing_server.client()
    for name, index in (("ivf", IVF), ("pq", PQ), ("graph", {"type": "hnsw"}),
                        ("scan", {"type": "exact"})):  # fmt: skip
        body = {"name": name, "dim": DIM, "metric": "l2", "index": index}
        r = client.post("/v1/collections", json=body)
        assert r.status_code == 201, r.text
        for start in range(0, N, 1000):
            docs = [{"id": f"v{i}", "vector": BASE[i].tolist(), "text": f"point {i}",
                     "metadata": {"odd": i % 2}} for i in range(start, start + 1000)]  # fmt: skip
            job = client.post(f"/v1/collections/{name}/documents", json={"documents": docs})
            assert wait_job(client, job.json()["job_id"])["status"] == "done"
    return client


def _ids(c: httpx.Client, name: str, q: np.ndarray, **extra: Any) -> list[str]:
    r = c.post(f"/v1/collections/{name}/query", json={"vector": q.tolist(), "k": K, **extra})
    assert r.status_code == 200, r.text
    return [h["document_id"] for h in r.json()["hits"]]


def _recall(found: list[list[str]], truth: list[list[str]]) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found, truth, strict=True)]))


def test_nprobe_per_query_reaches_the_ivf_index(c: httpx.Client) -> None:
    truth = _exact(QS)
    default = [_ids(c, "ivf", q) for q in QS]
    one = [_ids(c, "ivf", q, params={"nprobe": 1}) for q in QS]
    every = [_ids(c, "ivf", q, params={"nprobe": NLIST}) for q in QS]
    assert one == default  # the configured nprobe is 1
    assert every == truth  # every list scanned: the exact top k
    assert _recall(default, truth) < 0.9  # so the default really was approximate


def test_params_reach_filtered_and_grouped_searches(c: httpx.Client) -> None:
    odd = np.arange(1, N, 2)
    truth = _exact(QS[:5], odd)
    flt = {"odd": 1}
    got = [_ids(c, "ivf", q, filter=flt, params={"nprobe": NLIST}) for q in QS[:5]]
    assert got == truth
    grouped = [_ids(c, "ivf", q, group_by="document", params={"nprobe": NLIST}) for q in QS[:5]]
    assert grouped == _exact(QS[:5])  # one chunk a document: the same top k
    # a scored grouping runs the fused path (registry/hybrid.py fused_search): the same knobs
    fused = {"group_by": "document", "doc_scoring": "max_sum", "params": {"nprobe": NLIST}}
    assert [_ids(c, "ivf", q, **fused) for q in QS[:5]] == _exact(QS[:5])
    # hybrid: the dense half searches with the knobs too (a bad one is refused, not ignored)
    r = c.post("/v1/collections/ivf/query", json={"vector": QS[0].tolist(), "text": "point",
                                                  "mode": "hybrid", "params": {"nprobe": 0}})  # fmt: skip
    assert r.status_code == 422 and "nprobe" in r.json()["error"]["message"], r.text


def test_refine_factor_and_nprobe_per_query_raise_ivf_pq_recall(c: httpx.Client) -> None:
    truth = _exact(QS)
    default = _recall([_ids(c, "pq", q) for q in QS], truth)
    more = {"nprobe": 8, "refine_factor": 64}  # every list, 640 candidates re-ranked exactly
    raised = _recall([_ids(c, "pq", q, params=more) for q in QS], truth)
    assert raised >= default and raised >= 0.95, (default, raised)
    assert default < 0.9, default


def test_ef_search_in_params_equals_the_shorthand(c: httpx.Client) -> None:
    for q in QS[:5]:
        via_params = _ids(c, "graph", q, params={"ef_search": 12})
        assert via_params == _ids(c, "graph", q, ef_search=12)
        assert via_params == _ids(c, "graph", q, ef_search=12, params={"ef_search": 12})


@pytest.mark.parametrize(
    ("name", "extra", "words"),
    [
        ("ivf", {"params": {"ef_search": 64}}, ["ef_search", "valid: nprobe"]),
        ("graph", {"params": {"nprobe": 4}}, ["nprobe", "valid: ef_search"]),
        ("pq", {"params": {"bogus": 1}}, ["bogus", "nprobe, refine_factor"]),
        ("ivf", {"params": {"nprobe": 0}}, ["nprobe", "[1, 65536]"]),
        ("ivf", {"params": {"nprobe": 10**6}}, ["nprobe", "out of range"]),
        ("ivf", {"params": {"nprobe": "8"}}, ["nprobe", "integer"]),
        ("ivf", {"params": {"nprobe": 2.5}}, ["nprobe", "integer"]),
        ("pq", {"params": {"refine_factor": True}}, ["refine_factor", "integer"]),
        ("graph", {"ef_search": 32, "params": {"ef_search": 64}}, ["params.ef_search", "one"]),
        ("scan", {"params": {"nprobe": 4}}, ["'exact' indexes have no search parameters"]),
        ("scan", {"ef_search": 64}, ["no search parameters"]),
    ],
)
def test_bad_params_are_422_naming_the_fix(
    c: httpx.Client, name: str, extra: dict[str, Any], words: list[str]
) -> None:
    r = c.post(f"/v1/collections/{name}/query", json={"vector": QS[0].tolist(), **extra})
    assert r.status_code == 422, r.text
    message = r.json()["error"]["message"]
    assert all(w in message for w in words), message


def test_clients_and_cli_send_params(c: httpx.Client, hashing_server: Server) -> None:
    truth = _exact(QS[:1])[0]
    with Client(hashing_server.url) as es:
        hits = es.query("ivf", vector=QS[0].tolist(), k=K, params={"nprobe": NLIST}).hits
        assert [h.document_id for h in hits] == truth

    async def aio() -> list[str]:
        async with AsyncClient(hashing_server.url) as es:
            out = await es.query("ivf", vector=QS[0].tolist(), k=K, params={"nprobe": NLIST})
            return [h.document_id for h in out.hits]

    assert asyncio.run(aio()) == truth
    # the CLI embeds text: a text collection on the server's hashing model
    body = {"name": "t", "index": IVF, "search": {"mode": "dense"}}
    assert c.post("/v1/collections", json=body).status_code == 201
    for start in (0, 600):
        docs = [
            {"id": f"d{i}", "text": f"note {i} about {i % 7}"} for i in range(start, start + 600)
        ]
        job = c.post("/v1/collections/t/documents", json={"documents": docs}).json()
        assert wait_job(c, job["job_id"])["status"] == "done"

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*EMBEDSTACK, "query", "note 3 about 3", "-c", "t", "--json",
                               "--url", hashing_server.url, *args], env=server_env(),
                              capture_output=True, text=True, timeout=120)  # fmt: skip

    full = c.post("/v1/collections/t/query",
                  json={"text": "note 3 about 3", "k": 5, "params": {"nprobe": NLIST}})  # fmt: skip
    out = cli("--param", f"nprobe={NLIST}")
    assert out.returncode == 0, out.stderr
    got = orjson.loads(out.stdout)["hits"]
    assert [h["document_id"] for h in got] == [h["document_id"] for h in full.json()["hits"]]
    bad = cli("--param", "nprobe=lots")
    assert bad.returncode == 1 and "nprobe must be an integer" in bad.stderr, bad.stderr
    assert "Traceback" not in bad.stderr
