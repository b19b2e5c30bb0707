"""Every bad input gets the right 4xx with a message, and the server keeps serving."""

from __future__ import annotations

import math
import socket
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import Server, wait_job


@pytest.fixture(scope="module")
def client(hashing_server: Server) -> httpx.Client:
    c = hashing_server.client()
    assert c.post("/v1/collections", json={"name": "good"}).status_code == 201
    r = c.post("/v1/collections", json={"name": "vecs", "dim": 4, "metric": "cosine"})
    assert r.status_code == 201, r.text
    job = c.post(
        "/v1/collections/good/documents", json={"documents": [{"id": "d1", "text": "hello world"}]}
    ).json()
    assert wait_job(c, job["job_id"])["status"] == "done"
    return c


def _still_serving(c: httpx.Client) -> None:
    assert c.get("/healthz").status_code == 200
    r = c.post("/v1/collections/good/query", json={"text": "hello", "k": 1})
    assert r.status_code == 200 and r.json()["hits"][0]["document_id"] == "d1"


CASES = [
    # (method, path, body or raw bytes, expected status, words the message must contain)
    ("post", "/v1/collections/good/query", b'{"text": "unterminated', 422, "not valid JSON"),
    ("post", "/v1/collections/good/query", b"[1, 2, 3]", 422, "invalid request"),
    ("post", "/v1/collections/good/query", {"text": 42}, 422, "text"),
    ("post", "/v1/collections/good/query", {"text": "x", "k": "ten"}, 422, "k"),
    ("post", "/v1/collections/good/query", {"text": "x", "k": 0}, 422, "k"),
    ("post", "/v1/collections/good/query", {"text": "x", "k": 100000}, 422, "limit"),
    ("post", "/v1/collections/good/query", {"text": "   "}, 422, "empty"),
    ("post", "/v1/collections/good/query", {}, 422, "exactly one"),
    ("post", "/v1/collections/good/query", {"text": "x", "vector": [1.0]}, 422, "exactly one"),
    ("post", "/v1/collections/good/query", {"text": "x", "filter": {"a": {"$regex": "x"}}}, 422,
     "operator"),
    ("post", "/v1/collections/good/query", {"text": "x", "filter": {"a": [1, 2]}}, 422, "$in"),
    ("post", "/v1/collections/good/query", {"vector": [0.1] * 384}, 409, "space"),
    ("post", "/v1/collections/nope/query", {"text": "x"}, 404, "does not exist"),
    ("post", "/v1/collections/nope/documents", {"documents": [{"id": "a", "text": "b"}]}, 404,
     "does not exist"),
    ("post", "/v1/collections/good/documents", {"documents": []}, 422, "empty"),
    ("post", "/v1/collections/good/documents", {"documents": [{"id": "a", "text": ""}]}, 422,
     "empty text"),
    ("post", "/v1/collections/good/documents", {"documents": [{"id": "a"}]}, 422, "text"),
    ("post", "/v1/collections/good/documents",
     {"documents": [{"id": "a", "text": "x"}, {"id": "a", "text": "y"}]}, 422, "twice"),
    ("post", "/v1/collections/good/documents", {"documents": [{"id": "a", "text": "x" * 2_000_001}]},
     413, "limit"),
    ("post", "/v1/collections/good/documents", {"documents": [{"id": "", "text": "x"}]}, 422, "id"),
    ("post", "/v1/collections/good/documents", {"docs": []}, 422, "documents"),
    ("post", "/v1/collections/vecs/documents", {"documents": [{"id": "a", "vector": [1, 2]}]}, 409,
     "dimensions"),
    ("post", "/v1/collections/vecs/documents", {"documents": [{"id": "a", "vector": [0, 0, 0, 0]}]},
     422, "zeros"),
    ("post", "/v1/collections/vecs/documents", {"documents": [{"id": "a", "text": "no vector"}]}, 422,
     "vector"),
    ("post", "/v1/collections/vecs/query", {"vector": [1, 2, 3]}, 409, "dimensions"),
    ("post", "/v1/collections/vecs/query", {"text": "words"}, 422, "no model"),
    ("post", "/v1/collections", {"name": "bad name!"}, 422, "not valid"),
    ("post", "/v1/collections", {"name": "good"}, 409, "already exists"),
    ("post", "/v1/collections", {"name": "m", "model": "no-such-model"}, 404, "available models"),
    ("post", "/v1/collections", {"name": "d", "dim": 4}, 422, "metric"),
    ("post", "/v1/collections", {"name": "i", "index": {"type": "annoy"}}, 422, "hnsw"),
    ("post", "/v1/collections", {"name": "i", "index": {"type": "hnsw", "M": 0}}, 422, "M"),
    ("post", "/v1/collections", {"name": "c", "chunking": {"size": 4}}, 422, "size"),
    ("post", "/v1/collections", {"name": "c", "chunking": {"size": 100000}}, 422, "size"),
    ("post", "/v1/embeddings", {"input": []}, 422, "empty"),
    ("post", "/v1/embeddings", {"input": [""]}, 422, "empty"),
    ("post", "/v1/embeddings", {"input": "x", "model": "nope"}, 404, "available models"),
    ("post", "/v1/embeddings", {"input": "x", "dimensions": 3}, 422, "dimensions"),
    ("post", "/v1/embeddings", {"input": 5}, 422, "input"),
    ("get", "/v1/jobs/not-a-job", None, 404, "not"),
    ("get", "/v1/collections/nope", None, 404, "does not exist"),
    ("delete", "/v1/collections/good/documents/nope", None, 404, "does not exist"),
    ("get", "/v1/no/such/route", None, 404, "no such route"),
    ("put", "/v1/collections", None, 405, "not allowed"),
]  # fmt: skip


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), CASES)
def test_bad_input_gets_clear_4xx(
    client: httpx.Client, method: str, path: str, body: object, status: int, words: str
) -> None:
    if isinstance(body, bytes):
        r = client.request(method, path, content=body, headers={"content-type": "application/json"})
    elif body is None:
        r = client.request(method, path)
    else:
        r = client.request(method, path, json=body)
    assert r.status_code == status, r.text
    message = r.json()["error"]["message"]
    assert words.lower() in message.lower(), message
    _still_serving(client)


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_non_finite_vector_is_422(client: httpx.Client, bad: float) -> None:
    # httpx refuses to encode NaN, so the body is written by hand, as a careless client would
    raw = '{"documents": [{"id": "n", "vector": [1, 2, 3, %s]}]}' % (
        "NaN" if bad != bad else "Infinity"
    )
    r = client.post(
        "/v1/collections/vecs/documents", content=raw, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    assert "finite" in r.json()["error"]["message"] or "JSON" in r.json()["error"]["message"]
    q = '{"vector": [1, 2, 3, NaN]}'
    r = client.post(
        "/v1/collections/vecs/query", content=q, headers={"content-type": "application/json"}
    )
    assert r.status_code == 422, r.text
    _still_serving(client)


def test_oversized_body_is_413(hashing_server: Server, client: httpx.Client) -> None:
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 1000000000\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", hashing_server.port), timeout=10) as s:
        s.sendall(head.encode() + b'{"input": "')
        answer = b""
        while b"limit" not in answer and len(answer) < 4096:
            got = s.recv(4096)
            if not got:
                break
            answer += got
    assert answer.startswith(b"HTTP/1.1 413"), answer
    assert b"limit" in answer
    _still_serving(client)


def test_streamed_body_over_limit_is_413(hashing_server: Server, client: httpx.Client) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"input": "'
        for _ in range(70):
            yield b"x" * (1024 * 1024)
        yield b'"}'

    r = client.post(
        "/v1/embeddings", content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    _still_serving(client)


def test_byo_vectors_round_trip(client: httpx.Client) -> None:
    docs = [{"id": f"v{i}", "vector": [float(i == j) + 0.1 for j in range(4)], "text": f"t{i}",
             "metadata": {"i": i}} for i in range(4)]  # fmt: skip
    job = client.post("/v1/collections/vecs/documents", json={"documents": docs}).json()
    assert wait_job(client, job["job_id"])["status"] == "done"
    r = client.post("/v1/collections/vecs/query", json={"vector": [0, 0, 1, 0], "k": 2})
    hits = r.json()["hits"]
    assert hits[0]["document_id"] == "v2" and hits[0]["text"] == "t2"
    r = client.post(
        "/v1/collections/vecs/query",
        json={"vector": [0, 0, 1, 0], "k": 4, "filter": {"i": {"$gte": 3}}},
    )
    assert [h["document_id"] for h in r.json()["hits"]] == ["v3"]
