"""Bad inputs that used to reach SQLite, orjson or the index unchecked: each gets a 4xx with a
message naming the problem, and the server keeps serving."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Server, wait_job

DEEP = {"a": 1}
for _ in range(40):
    DEEP = {"n": DEEP}


@pytest.fixture(scope="module")
def client(hashing_server: Server) -> httpx.Client:
    c = hashing_server.client()
    assert c.post("/v1/collections", json={"name": "s"}).status_code == 201
    r = c.post("/v1/collections", json={"name": "sv", "dim": 4, "metric": "l2"})
    assert r.status_code == 201, r.text
    docs = [{"id": f"d{i}", "text": f"hello world {i}", "metadata": {"n": i}} for i in range(5)]
    job = c.post("/v1/collections/s/documents", json={"documents": docs}).json()
    assert wait_job(c, job["job_id"])["status"] == "done"
    return c


def _still_serving(c: httpx.Client) -> None:
    r = c.post("/v1/collections/s/query", json={"text": "hello world 1", "k": 1})
    assert r.status_code == 200, r.text
    assert r.json()["hits"][0]["document_id"] == "d1"


Q = "/v1/collections/s/query"
D = "/v1/collections/s/documents"
CASES = [
    # (path, JSON body or raw bytes, status, words the message must contain)
    (Q, {"text": "x", "filter": {"n": 2**63}}, 422, "n"),
    (Q, {"text": "x", "filter": {"n": -(2**70)}}, 422, "n"),
    (Q, {"text": "x", "filter": {"n": {"$in": [2**64]}}}, 422, "n"),
    (Q, {"text": "x", "filter": {"n": {"$gt": {"a": 1}}}}, 422, "n"),
    (Q, {"text": "x", "filter": {"n": {"$in": [[1], {"a": 1}]}}}, 422, "n"),
    (Q, {"text": "x", "filter": {"n": {}}}, 422, "empty"),
    (Q, {"text": "x", "filter": {"n": {"$in": "abc"}}}, 422, "list"),
    (Q, {"text": "x", "filter": {"n": {"$eq": 1, "$bogus": 2}}}, 422, "operator"),
    (Q, {"text": "x", "filter": {"": 1}}, 422, "key"),
    (Q, {"text": "x", "filter": {"a\\b": 1}}, 422, "key"),
    (Q, {"text": "x", "filter": {"n": {"$in": list(range(40_000))}}}, 422, "values"),
    (Q, b'{"text": "x", "filter": {"n": NaN}}', 422, "n"),
    (Q, rb'{"text": "\ud800 lone"}', 422, "surrogate"),
    (Q, {"text": "x", "ef_search": 10**9}, 422, "ef_search"),
    (Q, {"text": "x", "k": 2**70}, 422, "k"),
    (Q, {"text": "x", "group_by": "chunk"}, 422, "group_by"),
    ("/v1/collections/sv/query", {"vector": [1, 2, 3, 1e39]}, 422, "finite"),
    (D, rb'{"documents": [{"id": "x", "text": "\ud800"}]}', 422, "surrogate"),
    (D, rb'{"documents": [{"id": "\udfff", "text": "ok"}]}', 422, "unicode"),
    (D, rb'{"documents": [{"id": "x", "text": "ok", "metadata": {"k\ud800": 1}}]}', 422,
     "surrogate"),
    (D, rb'{"documents": [{"id": "x", "text": "ok", "metadata": {"k": ["\ud800"]}}]}', 422,
     "surrogate"),
    (D, {"documents": [{"id": "x", "text": "ok", "metadata": {"k": 2**64}}]}, 422, "integer"),
    (D, {"documents": [{"id": "x", "text": "ok", "metadata": DEEP}]}, 422, "deep"),
    (D, {"documents": [{"id": "x", "text": "ok", "metadata": {"b": "y" * 70_000}}]}, 422,
     "bytes"),
    (D, b'{"documents": [{"id": "x", "text": "ok", "metadata": {"v": NaN}}]}', 422, "finite"),
    (D, b'{"documents": [{"id": "x", "text": "ok", "metadata": {"v": [Infinity]}}]}', 422,
     "finite"),
    (D, b'{"documents": [{"id": "x", "text": "ok", "metadata": {"v": 1e999}}]}', 422, "finite"),
    ("/v1/collections/sv/documents", {"documents": [{"id": "x", "vector": [1, 2, 3, 1e39]}]}, 422,
     "finite"),
    ("/v1/collections", {"name": "u", "index": {"type": "hnsw", "M": "32"}}, 422, "M"),
    ("/v1/collections", {"name": "u", "index": {"type": "hnsw", "M": 2**70}}, 422, "M"),
    ("/v1/collections", {"name": "u", "index": ["hnsw"]}, 422, "index"),
    ("/v1/collections/s/upgrade", {"model": "hashing-test-b", "auto_cutover": True,
                                   "gate": {"min_overlap": "x"}}, 422, "min_overlap"),
    ("/v1/collections/s/upgrade", {"model": "hashing-test-b", "gate": {"k": "10"}}, 422, "'k'"),
    ("/v1/embeddings", rb'{"input": "\ud800"}', 422, "surrogate"),
    ("/v1/embeddings", rb'{"input": ["ok", "\udc00"]}', 422, "surrogate"),
]  # fmt: skip


@pytest.mark.parametrize(("path", "body", "status", "words"), CASES)
def test_bad_input_is_4xx_with_a_message(
    client: httpx.Client, path: str, body: object, status: int, words: str
) -> None:
    if isinstance(body, bytes):
        r = client.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = client.post(path, json=body)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words.lower() in message.lower(), message
    _still_serving(client)


def test_deeply_nested_json_is_refused(client: httpx.Client) -> None:
    raw = '{"text": "x", "filter": ' + '{"a": ' * 100_000 + "1" + "}" * 100_000 + "}"
    r = client.post(Q, content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, r.text
    _still_serving(client)


def test_ef_search_reaches_the_index(client: httpx.Client) -> None:
    base = client.post(Q, json={"text": "hello world 3", "k": 3}).json()["hits"]
    tuned = client.post(Q, json={"text": "hello world 3", "k": 3, "ef_search": 512}).json()
    assert [h["document_id"] for h in tuned["hits"]] == [h["document_id"] for h in base]
    # an index without that knob says so instead of ignoring it
    r = client.post("/v1/collections", json={"name": "ivf", "index": {"type": "ivf_flat"}})
    assert r.status_code == 201, r.text
    job = client.post(
        "/v1/collections/ivf/documents", json={"documents": [{"id": "a", "text": "hello"}]}
    ).json()
    assert wait_job(client, job["job_id"])["status"] == "done"
    r = client.post("/v1/collections/ivf/query", json={"text": "hello", "ef_search": 64})
    assert r.status_code == 422 and "ef_search" in r.json()["error"]["message"], r.text
