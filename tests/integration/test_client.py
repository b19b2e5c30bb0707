"""embedstack.client against a real `embedstack serve` on loopback (the hashing test model):
every route has a client method, the whole API round-trips typed, uploads split to the server's
limits, errors arrive typed, and retries honour 429 Retry-After and 503."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from embedstack.client import (
    AsyncClient,
    Client,
    ConnectError,
    InvalidInputError,
    NotFoundError,
    OverloadedError,
    PayloadTooLargeError,
    Progress,
    RequestTimeout,
    SpaceMismatchError,
    UnavailableError,
)
from embedstack.client._core import split_documents
from embedstack.serving.responses import CollectionOut, JobOut, QueryOut
from tests.conftest import Server, server_env

# (method, path) of every route in /openapi.json -> the client method that calls it
ROUTES = {
    ("get", "/healthz"): "health",
    ("get", "/readyz"): "ready",
    ("get", "/metrics"): "metrics",
    ("get", "/v1/metrics/history"): "metrics_history",
    ("get", "/v1/models"): "models",
    ("post", "/v1/embeddings"): "embeddings",
    ("post", "/v1/collections"): "create_collection",
    ("get", "/v1/collections"): "list_collections",
    ("get", "/v1/collections/{name}"): "get_collection",
    ("delete", "/v1/collections/{name}"): "delete_collection",
    ("patch", "/v1/collections/{name}"): "update_index",
    ("post", "/v1/collections/{name}/documents"): "add_documents",
    ("post", "/v1/collections/{name}/records"): "add_records",
    ("post", "/v1/collections/{name}/vectors"): "add_vectors",
    ("get", "/v1/jobs/{job_id}"): "get_job",
    ("get", "/v1/collections/{name}/documents/{doc_id}"): "get_document",
    ("delete", "/v1/collections/{name}/documents/{doc_id}"): "delete_document",
    ("post", "/v1/collections/{name}/query"): "query",
    ("post", "/v1/collections/{name}/upgrade"): "start_upgrade",
    ("get", "/v1/collections/{name}/upgrade"): "upgrade_status",
    ("post", "/v1/collections/{name}/upgrade/cutover"): "cutover",
    ("post", "/v1/collections/{name}/rollback"): "rollback",
    ("post", "/v1/collections/{name}/retire"): "retire",
    ("post", "/v1/aliases"): "set_alias",
    ("get", "/v1/aliases"): "list_aliases",
    ("delete", "/v1/aliases/{alias}"): "delete_alias",
    ("post", "/v1/keys"): "create_key",
    ("get", "/v1/keys"): "list_keys",
    ("post", "/v1/keys/{prefix}/rotate"): "rotate_key",
    ("delete", "/v1/keys/{prefix}"): "revoke_key",
    ("get", "/v1/audit"): "audit",
    ("post", "/v1/feedback"): "feedback",
    ("get", "/v1/collections/{name}/stats"): "collection_stats",
    ("post", "/v1/collections/{name}/drift/baseline"): "reset_drift_baseline",
}

MAX_DOCS, MAX_BODY = 5, 4096  # the server's limits in this module


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """The hashing test model, with small upload limits so that splitting shows."""
    env = server_env(
        EMBEDSTACK_DEFAULT_MODEL="hashing-test",
        EMBEDSTACK_MAX_DOCUMENTS_PER_REQUEST=str(MAX_DOCS),
        EMBEDSTACK_MAX_BODY_BYTES=str(MAX_BODY),
    )
    s = Server(tmp_path_factory.mktemp("client") / "data", env).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def es(server: Server) -> Iterator[Client]:
    with Client(server.url, max_documents=MAX_DOCS, max_body_bytes=MAX_BODY, timeout=30) as c:
        yield c


def test_every_route_has_a_client_method(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json").json()
    routes = {(m, p) for p, ops in spec["paths"].items() for m in ops}
    missing = sorted(routes - ROUTES.keys())
    assert not missing, f"routes without a client method (add one and map it here): {missing}"
    stale = sorted(ROUTES.keys() - routes)
    assert not stale, f"mapped routes the server no longer has: {stale}"
    for name in ROUTES.values():
        assert callable(getattr(Client, name)), name
        assert asyncio.iscoroutinefunction(getattr(AsyncClient, name)), name


def test_the_async_client_is_the_twin_of_the_client() -> None:
    """Same public methods with the same parameters (their bodies are written twice)."""
    public = {n for n in dir(Client) if not n.startswith("_")} - {"close"}
    assert public == {n for n in dir(AsyncClient) if not n.startswith("_")} - {"close", "like"}
    for name in sorted(public):
        sync, aio = getattr(Client, name), getattr(AsyncClient, name)
        if callable(sync):
            assert (
                inspect.signature(sync).parameters.keys()
                == inspect.signature(aio).parameters.keys()
            ), name
            assert [p.default for p in inspect.signature(sync).parameters.values()] == [
                p.default for p in inspect.signature(aio).parameters.values()
            ], name


def _docs(n: int, prefix: str = "d", size: int = 0) -> list[dict[str, Any]]:
    pad = " filler" * size
    return [
        {"id": f"{prefix}{i}", "text": f"document {i} about topic{i % 3}{pad}",
         "metadata": {"n": i, "lang": "en" if i % 2 else "fr"}}
        for i in range(n)
    ]  # fmt: skip


def test_whole_api_round_trips_typed(es: Client) -> None:
    assert es.health().status == "ok"
    ready = es.ready()
    assert ready.ready and "hashing-test" in ready.models_loaded
    assert any(m.id == "hashing-test" for m in es.models().data)

    made = es.create_collection("kb", chunking={"mode": "tokens", "size": 64})
    assert isinstance(made, CollectionOut) and made.model == "hashing-test"
    seen: list[Progress] = []
    result = es.add_documents("kb", _docs(12), progress=lambda p: seen.append(
        Progress(**vars(p))))  # fmt: skip
    assert len(result.submitted) == 3  # 12 documents at 5 per request
    assert result.documents == 12 and not result.failed
    assert all(isinstance(j, JobOut) and j.status == "done" for j in result.jobs)
    assert seen[-1].finished and seen[-1].jobs_done == 3
    assert [p.submitted for p in seen[:3]] == [5, 10, 12]
    assert es.get_job(result.job_ids[0]).status == "done"

    hits = es.query("kb", "topic1", k=20, filter={"lang": "en", "n": {"$gte": 3}})
    assert isinstance(hits, QueryOut) and hits.hits
    assert all(h.metadata["lang"] == "en" and h.metadata["n"] >= 3 for h in hits.hits)
    grouped = es.query("kb", "document", k=4, group_by="document")
    assert len({h.document_id for h in grouped.hits}) == len(grouped.hits) == 4
    space = es.get_collection("kb").space_id
    vec = es.embed(["topic2"])[0]
    by_vector = es.query("kb", vector=vec, space_id=space, k=3)
    assert by_vector.hits[0].metadata["n"] % 3 == 2

    # again with the same content: every document is unchanged
    again = es.add_documents("kb", _docs(12))
    assert again.unchanged == 12

    assert [c.name for c in es.list_collections()] == ["kb"]
    assert es.get_collection("kb").documents == 12
    assert es.update_index("kb", {"type": "flat"}).rebuilding is True

    assert es.set_alias("kb-live", "kb").collection == "kb"
    assert es.list_aliases() == {"kb-live": "kb"}
    assert es.query("kb-live", "topic0", k=1).collection == "kb"
    assert es.delete_alias("kb-live").deleted == "kb-live"

    assert es.delete_document("kb", "d0") is not None
    assert es.delete_document("kb", "d0", missing_ok=True) is None
    with pytest.raises(NotFoundError) as err:
        es.delete_document("kb", "d0")
    assert err.value.status == 404 and err.value.type == "NotFound" and "'d0'" in err.value.message

    floats = es.embeddings(["a b", "c"], "hashing-test")
    b64 = es.embeddings(["a b", "c"], "hashing-test", encoding_format="base64")
    assert isinstance(b64.data[0].embedding, str)
    for got, want in zip(es.embed(["a b", "c"], "hashing-test"), floats.data, strict=True):
        assert got == pytest.approx(want.embedding, abs=1e-6)
    assert "embedstack" in es.metrics()
    assert any(k.startswith("embedstack_") for k in es.stats())


def test_upgrade_cutover_rollback_retire(es: Client) -> None:
    es.create_collection("up", model="hashing-test")
    es.add_documents("up", _docs(8, "u"))
    started = es.start_upgrade("up", "hashing-test-b", gate={"min_overlap": 0.0})
    assert started.model == "hashing-test-b" and started.collection == "up"
    ready = es.wait_upgrade("up", timeout=120)
    assert ready.state == "ready", ready
    assert es.upgrade_status("up").done == ready.total
    cut = es.cutover("up")
    assert cut.state == "cut_over"
    assert es.get_collection("up").model == "hashing-test-b"
    assert es.rollback("up").space_id == started.from_space
    assert es.get_collection("up").model == "hashing-test"
    assert es.retire("up").retired == started.to_space


def test_errors_are_typed_with_the_servers_message(es: Client) -> None:
    with pytest.raises(NotFoundError) as nf:
        es.get_collection("nope")
    assert nf.value.type == "NotFound" and "nope" in str(nf.value)
    assert "GET http://127.0.0.1:" in str(nf.value) and "\n" not in str(nf.value)
    es.create_collection("errs")
    with pytest.raises(InvalidInputError) as bad:
        es.query("errs", "x", filter={"n": {"$regex": "a"}})
    assert "unknown filter operator" in bad.value.message
    with pytest.raises(SpaceMismatchError) as sm:
        es.query("errs", vector=[0.1] * 8)
    assert sm.value.status == 409 and "space_id" in sm.value.message


def test_uploads_split_by_count_and_by_bytes(es: Client, server: Server) -> None:
    es.create_collection("big")
    docs = _docs(9, "b", size=60)  # ~500 bytes each: 4096-byte bodies would hold 8
    bodies = split_documents(docs, MAX_DOCS, 1500)
    assert sum(n for n, _ in bodies) == 9 and len(bodies) == 5
    assert all(len(b) <= 1500 and n <= MAX_DOCS for n, b in bodies)
    assert [n for n, _ in split_documents(docs, 3, 10**6)] == [3, 3, 3]
    assert len(es.add_documents("big", docs).submitted) == 2  # by count
    # a client that does not know the byte limit: the server's 413 halves the request
    with Client(server.url, max_documents=MAX_DOCS, max_body_bytes=10**9) as loose:
        docs = _docs(5, "c", size=120)  # ~900 bytes each: 5 are over 4096 together
        result = loose.add_documents("big", docs)
        assert result.documents == 5 and len(result.submitted) >= 2
        with pytest.raises(PayloadTooLargeError) as big:
            loose.add_documents("big", [{"id": "huge", "text": "x " * 5000}])
        assert big.value.status == 413 and "split" in big.value.message
    # a client that does not know the count limit learns it from the server's refusal
    with Client(server.url, max_documents=100) as unaware:
        learned = unaware.add_documents("big", _docs(12, "e"))
        assert learned.documents == 12 and len(learned.submitted) == 3
        assert unaware.settings.max_documents == MAX_DOCS
    assert es.get_collection("big").documents == 26


def test_records_and_vectors_through_the_client(es: Client) -> None:
    template = {"id": "sku", "text": ["title"], "metadata": ["n"]}
    made = es.create_collection("rec", record=template, lexical_fields=["n"])
    assert made.record and made.record["id"] == "sku" and made.lexical_fields == ["n"]
    records = [{"sku": f"s{i}", "title": f"item number {i}", "n": i} for i in range(7)]
    records += [{"title": "no id"}, {"sku": "s9"}]
    with Client(es.base_url, max_documents=100) as unaware:  # learns the count limit
        out = unaware.add_records("rec", records)
    assert (out.documents, out.rejected, len(out.submitted)) == (7, 2, 2)
    assert sorted(r.where for r in out.rejections) == ["records[2]", "records[3] (sku 's9')"]
    assert es.get_collection("rec").documents == 7
    es.create_collection("byo", dim=3, metric="ip")
    vecs = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]
    put = es.add_vectors("byo", ["x", "y"], vecs, texts=["ex", "why"], metadata=[{}, {"k": 1}])
    assert put.documents == 2 and put.jobs[0].status == "done"
    hit = es.query("byo", vector=[0.0, 2.0, 0.1], k=1, mode="dense").hits[0]
    assert (hit.document_id, hit.metadata) == ("y", {"k": 1})
    es.add_vectors("byo", ["z"], np.array([[0.0, 0.0, 3.0]]))  # float64 array: sent as float32
    assert es.query("byo", vector=[0.1, 0.0, 1.0], k=1).hits[0].document_id == "z"


def test_async_client_round_trip(server: Server) -> None:
    async def run() -> None:
        async with AsyncClient(server.url, max_body_bytes=MAX_BODY) as ac:  # learns the count
            assert (await ac.health()).status == "ok"
            await ac.create_collection("aio")
            calls: list[int] = []
            done = await ac.add_documents("aio", _docs(7, "a"), progress=lambda p: calls.append(
                p.jobs_done))  # fmt: skip
            assert done.documents == 7 and calls[-1] == 2
            hits = await ac.query("aio", "topic2", k=3, filter={"lang": "fr"})
            assert hits.hits and all(h.metadata["lang"] == "fr" for h in hits.hits)
            vecs = await ac.embed(["one", "two"])
            assert len(vecs) == 2 and len(vecs[0]) == len(vecs[1])
            with pytest.raises(NotFoundError):
                await ac.upgrade_status("missing")
            assert "aio" in [c.name for c in await ac.list_collections()]
            assert (await ac.delete_collection("aio")).deleted == "aio"

    asyncio.run(run())


class FaultyProxy:
    """A loopback HTTP proxy in front of the real server that answers the first requests of a
    path with a given status (and Retry-After), then forwards; it records what it saw."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.faults: list[tuple[int, dict[str, str]]] = []
        self.seen: list[tuple[float, str, str, str | None]] = []
        self.delay = 0.0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                proxy.seen.append((time.monotonic(), self.command, self.path,
                                   self.headers.get("authorization")))  # fmt: skip
                time.sleep(proxy.delay)
                if proxy.faults:
                    status, headers = proxy.faults.pop(0)
                    payload = b'{"error": {"type": "Overloaded", "message": "busy, retry"}}'
                    self.send_response(status)
                    for k, v in {**headers, "content-length": str(len(payload))}.items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                r = httpx.request(self.command, proxy.target + self.path, content=body,
                                  headers={"content-type": "application/json"})  # fmt: skip
                self.send_response(r.status_code)
                self.send_header("content-type", r.headers.get("content-type", "text/plain"))
                self.send_header("content-length", str(len(r.content)))
                self.end_headers()
                self.wfile.write(r.content)

            do_GET = do_POST = do_DELETE = do_PATCH = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_retries_honour_retry_after_and_503_and_send_the_api_key(server: Server) -> None:
    proxy = FaultyProxy(server.url)
    try:
        with Client(proxy.url, api_key="sk-test", backoff=0.05) as es:
            proxy.faults = [(429, {"Retry-After": "1"}), (503, {})]
            assert es.models().data
            (t0, *_), (t1, *_), (t2, *_) = proxy.seen[-3:]
            assert t1 - t0 >= 0.95, "Retry-After: 1 was not honoured"
            assert t2 - t1 < 0.9  # 503 without Retry-After: short exponential backoff
            assert {auth for *_, auth in proxy.seen} == {"Bearer sk-test"}
            proxy.faults = [(429, {"Retry-After": "0"})] * 4  # more than 3 retries
            with pytest.raises(OverloadedError) as over:
                es.health()
            assert over.value.retry_after == 0.0 and over.value.message == "busy, retry"
            proxy.faults = [(503, {})]
            with pytest.raises(UnavailableError):  # creating is not retried: it is not idempotent
                es.create_collection("once")
            proxy.faults, proxy.delay = [(503, {})], 1.0  # answered late, never forwarded
            seen = len(proxy.seen)
            with Client(proxy.url, timeout=httpx.Timeout(5.0, read=0.2)) as slow:
                with pytest.raises(RequestTimeout) as late:
                    slow.add_documents("nowhere", [{"id": "a", "text": "b"}])
                assert "did not answer in time" in str(late.value)
            assert len(proxy.seen) == seen + 1  # sent once: a timed-out write is not re-sent
            proxy.faults, proxy.delay = [], 0.0
    finally:
        proxy.close()
    with Client(proxy.url, retries=1, backoff=0.01) as gone, pytest.raises(ConnectError) as ce:
        gone.health()
    assert proxy.url in str(ce.value)


def test_api_key_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("EMBEDSTACK_API_KEY", "from-env")
    monkeypatch.setenv("EMBEDSTACK_URL", "http://127.0.0.1:1/")
    with Client() as es:
        assert es.base_url == "http://127.0.0.1:1"
        assert es.settings.headers["authorization"] == "Bearer from-env"
