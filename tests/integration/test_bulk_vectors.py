"""POST /v1/collections/{name}/vectors (base64 bulk) on a real server, and the query path's
in-memory catalog: an alias moved or a collection re-created is seen by the very next query."""

from __future__ import annotations

import base64
import io
import json
import sqlite3
from contextlib import closing
from typing import Any

import httpx
import numpy as np

from tests.conftest import Server, wait_job

DIM = 16


def _b64(vecs: np.ndarray) -> str:
    return base64.b64encode(np.asarray(vecs, dtype="<f4").tobytes()).decode()


def _npy(vecs: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, vecs)
    return buf.getvalue()


def _multipart(
    c: httpx.Client, name: str, data: bytes, meta: dict[str, Any] | str
) -> httpx.Response:
    """POST the vectors as an .npy file part and their ids etc. as a JSON field."""
    return c.post(
        f"/v1/collections/{name}/vectors",
        files={"vectors": ("v.npy", data, "application/x-npy")},
        data={"meta": meta if isinstance(meta, str) else json.dumps(meta)},
    )


def _collection(c: httpx.Client, name: str) -> None:
    r = c.post("/v1/collections", json={"name": name, "dim": DIM, "metric": "cosine"})
    assert r.status_code == 201, r.text


def _query(c: httpx.Client, name: str, vec: np.ndarray, k: int = 3) -> dict[str, Any]:
    r = c.post(f"/v1/collections/{name}/query", json={"vector": vec.tolist(), "k": k})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_bulk_vectors_are_stored_indexed_and_served(hashing_server: Server) -> None:
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(300, DIM)).astype(np.float32)
    with hashing_server.client() as c:
        _collection(c, "bulk")
        body = {
            "ids": [f"v{i}" for i in range(300)],
            "vectors": _b64(vecs),
            "texts": [f"text {i}" for i in range(300)],
            "metadata": [{"i": i} for i in range(300)],
        }
        r = c.post("/v1/collections/bulk/vectors", json=body)
        assert r.status_code == 202, r.text
        assert r.json()["documents"] == 300
        assert wait_job(c, r.json()["job_id"])["status"] == "done"
        assert c.get("/v1/collections/bulk").json()["vectors"] == 300
        hit = _query(c, "bulk", vecs[123], k=1)["hits"][0]
        assert (hit["document_id"], hit["text"], hit["metadata"]) == (
            "v123",
            "text 123",
            {"i": 123},
        )
        assert abs(hit["score"] - 1.0) < 1e-5  # stored as unit rows: cosine of itself
        # the same vectors again: unchanged, nothing re-indexed
        again = c.post("/v1/collections/bulk/vectors", json=body).json()
        assert again["unchanged"] == 300
        # the same documents through JSON lists hash alike: unchanged too
        docs = [{"id": "v7", "text": "text 7", "metadata": {"i": 7}, "vector": vecs[7].tolist()}]
        r = c.post("/v1/collections/bulk/documents", json={"documents": docs})
        assert r.json()["unchanged"] == 1, r.text


def test_an_npy_upload_is_stored_and_served_like_base64(hashing_server: Server) -> None:
    """multipart: an .npy part (float64 here: converted) and a JSON 'meta' field; the same
    document through base64 hashes alike, so it reads unchanged."""
    vecs = np.random.default_rng(1).normal(size=(50, DIM))
    meta = {"ids": [f"n{i}" for i in range(50)], "texts": [f"t{i}" for i in range(50)]}
    with hashing_server.client() as c:
        _collection(c, "bulknpy")
        r = _multipart(c, "bulknpy", _npy(vecs), meta)
        assert r.status_code == 202, r.text
        assert wait_job(c, r.json()["job_id"])["status"] == "done"
        hit = _query(c, "bulknpy", vecs[17].astype(np.float32), k=1)["hits"][0]
        assert (hit["document_id"], hit["text"]) == ("n17", "t17")
        same = {"ids": ["n17"], "texts": ["t17"], "vectors": _b64(vecs[17:18])}
        assert c.post("/v1/collections/bulknpy/vectors", json=same).json()["unchanged"] == 1


def test_bulk_vectors_into_ivf_pq_with_sq8_refine_are_stored_once(hashing_server: Server) -> None:
    """An ivf_pq collection re-ranking from SQ8 codes (refine_bits=8) trains from a bulk upload
    and serves it; each vector is kept once in the store (its chunk row; the document row has
    none), a changed vector replaces its chunk, and the job reads done only once served."""
    n, dim = 3000, 32
    vecs = np.random.default_rng(2).normal(size=(n, dim)).astype(np.float32)
    index = {"type": "ivf_pq", "nlist": 8, "m": 8, "refine_bits": 8, "train_min": 1000}
    with hashing_server.client() as c:
        r = c.post("/v1/collections", json={"name": "pq8", "dim": dim, "metric": "cosine",
                                            "index": index})  # fmt: skip
        assert r.status_code == 201, r.text
        for start in (0, 1500):
            meta = {"ids": [f"p{i}" for i in range(start, start + 1500)]}
            r = _multipart(c, "pq8", _npy(vecs[start : start + 1500]), meta)
            assert r.status_code == 202, r.text
            assert wait_job(c, r.json()["job_id"])["status"] == "done"
        assert c.get("/v1/collections/pq8").json()["vectors"] == n
        hits = _query(c, "pq8", vecs[2500], k=3)["hits"]
        assert hits[0]["document_id"] == "p2500" and abs(hits[0]["score"] - 1.0) < 0.02
        moved = {"ids": ["p2500"], "vectors": _b64(vecs[7:8])}  # p2500 now holds p7's vector
        assert (
            wait_job(c, c.post("/v1/collections/pq8/vectors", json=moved).json()["job_id"])[
                "status"
            ]
            == "done"
        )
        assert {h["document_id"] for h in _query(c, "pq8", vecs[7], k=2)["hits"]} == {"p7", "p2500"}
    db = sqlite3.connect(f"file:{hashing_server.data_dir / 'store.db'}?mode=ro", uri=True)
    with closing(db):
        rows = db.execute(
            "SELECT count(*), count(vector) FROM documents WHERE collection='pq8'"
        ).fetchone()
        chunks = db.execute(
            "SELECT count(*), sum(length(vector)) FROM chunks WHERE collection='pq8'"
        )
        assert rows == (n, 0)
        assert chunks.fetchone() == (n, n * dim * 4)


def test_bad_bulk_vectors_are_refused_naming_the_fix(hashing_server: Server) -> None:
    vecs = np.ones((2, DIM), dtype=np.float32)
    bad_nan = vecs.copy()
    bad_nan[1, 3] = np.nan
    cases = [
        ({"ids": ["a", "b"], "vectors": "not base64!"}, "base64"),
        ({"ids": ["a", "b"], "vectors": _b64(vecs[:1])}, "need"),
        ({"ids": ["a", "b"], "vectors": _b64(bad_nan)}, "vector 1"),
        ({"ids": ["a", "b"], "vectors": _b64(np.zeros((2, DIM)))}, "all zeros"),
        ({"ids": ["a", "a"], "vectors": _b64(vecs)}, "repeats"),
        ({"ids": ["a", "b"], "vectors": _b64(vecs), "texts": ["x"]}, "one per id"),
        ({"ids": [], "vectors": ""}, "empty"),
    ]
    with hashing_server.client() as c:
        _collection(c, "bulkbad")
        for body, words in cases:
            r = c.post("/v1/collections/bulkbad/vectors", json=body)
            assert 400 <= r.status_code < 500, (body, r.text)
            assert words in r.json()["error"]["message"], (body, r.text)
        ok = {"ids": ["a", "b"]}
        npy_cases = [
            (b"not an npy file", ok, "numpy.save"),
            (_npy(vecs[:1]), ok, "shape"),
            (_npy(np.ones((2, DIM), dtype=np.int32)), ok, "float32"),
            (_npy(bad_nan), ok, "vector 1"),
            (_npy(vecs), "{not json", "JSON"),
            (_npy(vecs), {"vectors": "x"}, "ids"),
        ]
        for data, meta, words in npy_cases:
            r = _multipart(c, "bulkbad", data, meta)
            assert 400 <= r.status_code < 500, (meta, r.text)
            assert words in r.json()["error"]["message"], (meta, r.text)
        r = c.post("/v1/collections/bulkbad/vectors", content=_npy(vecs),
                   headers={"content-type": "application/x-npy"})  # fmt: skip
        assert r.status_code == 422 and "multipart" in r.text, r.text
        r = c.post("/v1/collections/bulkbad/vectors", files={"meta": (None, json.dumps(ok))})
        assert r.status_code == 422 and "'vectors'" in r.text, r.text
        # a collection with a model takes text, not vectors
        assert c.post("/v1/collections", json={"name": "withmodel"}).status_code == 201
        r = c.post("/v1/collections/withmodel/vectors", json={"ids": ["a"], "vectors": ""})
        assert r.status_code in (409, 422), r.text


def test_queries_follow_an_alias_moved_and_a_collection_recreated(hashing_server: Server) -> None:
    a = np.eye(DIM, dtype=np.float32)[0]
    b = np.eye(DIM, dtype=np.float32)[1]
    with hashing_server.client() as c:
        for name, vec in (("alias_a", a), ("alias_b", b)):
            _collection(c, name)
            body = {"ids": [name], "vectors": _b64(vec[None, :])}
            job = c.post(f"/v1/collections/{name}/vectors", json=body).json()["job_id"]
            assert wait_job(c, job)["status"] == "done"
        assert (
            c.post("/v1/aliases", json={"alias": "live", "collection": "alias_a"}).status_code
            == 200
        )
        assert _query(c, "live", a)["hits"][0]["document_id"] == "alias_a"
        assert _query(c, "live", a)["hits"][0]["document_id"] == "alias_a"  # cached now
        assert (
            c.post("/v1/aliases", json={"alias": "live", "collection": "alias_b"}).status_code
            == 200
        )
        assert _query(c, "live", a)["hits"][0]["document_id"] == "alias_b"
        assert c.delete("/v1/aliases/live").status_code == 200
        assert c.post("/v1/collections/live/query", json={"vector": a.tolist()}).status_code == 404
        # deleted and re-created under the same name with another dimension
        assert c.delete("/v1/collections/alias_a").status_code == 200
        r = c.post("/v1/collections", json={"name": "alias_a", "dim": 8, "metric": "cosine"})
        assert r.status_code == 201, r.text
        r = c.post("/v1/collections/alias_a/query", json={"vector": a.tolist()})
        assert r.status_code == 409 and "8-dim" in r.text, r.text
