"""POST /v1/collections/{name}/records on a real server: each record that does not fit the
template is listed with its job (durably: a kill -9 before the job runs keeps the list), the
rest are searchable; bad requests are 4xx; `embedstack ingest` rejections land in jobs too."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

from embedstack.client import AsyncClient
from tests.conftest import Server, server_env, wait_job
from tests.integration.test_ingest_files import ingest

HASHING = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
TEMPLATE = {"id": "sku", "text": ["title", "body"], "metadata": ["price"]}
RECORDS = [
    {"sku": "k1", "title": "Kettle", "body": "An electric kettle boils water.", "price": 20},
    {"title": "Spoon", "body": "A spoon without its id."},  # 1: no id
    {"sku": "k3", "title": "Mug"},  # 2: no body (a text field)
    {"sku": "k4", "title": "Teapot", "body": ["not", "text"]},  # 3: wrong type
    "not an object",  # 4
    {"sku": "k1", "title": "Kettle", "body": "Again."},  # 5: repeats records[0]'s id
    {"sku": 7, "title": "Whisk", "body": "A whisk beats eggs into foam.", "price": 3},
]


def reasons(job: dict[str, object]) -> dict[str, str]:
    listed = job["rejected"]
    assert isinstance(listed, list)
    return {r["where"].split(" (")[0]: r["reason"] for r in listed}


def check_rejections(job: dict[str, object]) -> None:
    got = reasons(job)
    assert sorted(got) == [f"records[{i}]" for i in (1, 2, 3, 4, 5)], got
    assert "no value for 'sku' (the template's id field)" in got["records[1]"]
    assert "no value for 'body' (the template's text field)" in got["records[2]"]
    assert "text field 'body' is list, not text" in got["records[3]"]
    assert "a record is a JSON object, got a string" in got["records[4]"]
    assert "repeats records[0]" in got["records[5]"]
    wheres = [r["where"] for r in job["rejected"]]  # type: ignore[union-attr]
    assert "records[5] (sku 'k1')" in wheres and "records[3] (sku 'k4')" in wheres


def test_records_job_lists_each_rejection_durably_and_indexes_the_rest(
    make_server: Callable[..., Server],
) -> None:
    # no worker: the job is still queued when the server is killed
    server = make_server(HASHING, args=["--workers", "0"])
    with server.client() as c:
        made = c.post("/v1/collections", json={"name": "shop", "record": TEMPLATE})
        assert made.status_code == 201, made.text
        r = c.post("/v1/collections/shop/records", json={"records": RECORDS})
        assert r.status_code == 202, r.text
        sent = r.json()
        assert (sent["documents"], sent["rejected"]) == (2, 5)
        queued = c.get(f"/v1/jobs/{sent['job_id']}").json()
        assert queued["status"] == "queued" and queued["documents"] == 2
        check_rejections(queued)
    server.stop(kill=True)
    server = make_server(HASHING)  # the same data dir, with its worker
    with server.client() as c:
        job = wait_job(c, sent["job_id"], timeout=120)
        assert job["status"] == "done", job
        check_rejections(job)
        assert job["result"]["documents"] == 2  # type: ignore[index]
        hits = c.post("/v1/collections/shop/query",
                      json={"text": "A whisk beats eggs into foam.", "k": 1}).json()["hits"]  # fmt: skip
        assert hits[0]["document_id"] == "7" and hits[0]["metadata"] == {"price": 3}
        assert c.get("/v1/collections/shop/documents/k1").json()["text"] == (
            "Kettle\nAn electric kettle boils water."
        )


def test_records_route_refuses_bad_requests_with_4xx(make_server: Callable[..., Server]) -> None:
    env = {**HASHING, "EMBEDSTACK_MAX_DOCUMENTS_PER_REQUEST": "4",
           "EMBEDSTACK_MAX_BODY_BYTES": "4096", "EMBEDSTACK_MAX_DOCUMENT_CHARS": "100"}  # fmt: skip
    server = make_server(env)
    with server.client() as c:
        assert c.post("/v1/collections", json={"name": "plain"}).status_code == 201
        r = c.post("/v1/collections", json={"name": "shop", "record": TEMPLATE})
        assert r.status_code == 201, r.text
        one = {"records": [RECORDS[0]]}
        r = c.post("/v1/collections/plain/records", json=one)
        assert r.status_code == 422 and "has no record template" in r.text, r.text
        assert '"record": {"id": FIELD' in r.json()["error"]["message"]
        for body, status, says in (
            (b"{not json", 422, "not valid JSON"),
            (b'{"records": {"sku": "k1"}}', 422, "records"),
            (b'{"records": []}', 422, "'records' is empty"),
            (b'{"records": [], "extra": 1}', 422, "extra"),
            (b'{"records": [{"sku": "a", "title": "x", "body": NaN}]}', 422, "not finite"),
            (b'{"records": [' + b'{"a": 1},' * 5 + b'{"a": 1}]}', 422, "6 records, over the 4"),
            (b'{"records": [{"sku": "' + b"x" * 5000 + b'"}]}', 413, ""),
        ):
            r = c.post("/v1/collections/shop/records", content=body,
                       headers={"content-type": "application/json"})  # fmt: skip
            assert r.status_code == status and says in r.text, (body[:60], r.status_code, r.text)
        r = c.post("/v1/collections/nope/records", json=one)
        assert r.status_code == 404, r.text
        # all rejected (one over the text limit, one id over 512 characters): a job lists them
        long_text = {"sku": "k9", "title": "T", "body": "y" * 200}
        long_id = {"sku": "i" * 600, "title": "T", "body": "b"}
        r = c.post("/v1/collections/shop/records", json={"records": [long_text, long_id]})
        assert r.status_code == 202 and r.json()["documents"] == 0, r.text
        job = wait_job(c, r.json()["job_id"], timeout=60)
        assert job["status"] == "done" and job["documents"] == 0, job
        got = reasons(job)
        assert "over the 100 limit" in got["records[0]"]
        assert "over the 512 limit" in got["records[1]"]

    async def through_the_client() -> None:
        async with AsyncClient(server.url) as ac:
            out = await ac.add_records("shop", RECORDS[:4], timeout=60)
            assert (out.documents, out.rejected) == (1, 3)
            wheres = [r.where for r in out.rejections]
            assert wheres == ["records[1]", "records[2] (sku 'k3')", "records[3] (sku 'k4')"]

    asyncio.run(through_the_client())


def test_cli_rejections_are_listed_by_their_jobs(
    tmp_path: Path, make_server: Callable[..., Server]
) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.csv").write_text(
        "sku,title,body,price\n"
        "k1,Kettle,An electric kettle boils water quickly.,20\n"
        'k2,"Teapot,A broken quote runs on,5\n'
        "k3,Mug,A ceramic mug holds hot tea.,5\n"
    )
    (folder / "b.jsonl").write_text(
        '{"sku": "j1", "title": "Pan", "body": "A frying pan.", "price": 9}\n'
        '{"title": "Lid", "body": "A lid without its id."}\n'
    )
    data = tmp_path / "data"
    template = ("--record-id", "sku", "--record-text", "title,body", "--record-metadata", "price")
    out = ingest(str(folder), "-c", "shop", "--data-dir", str(data), "--job-size", "2", *template)
    assert out.returncode == 1 and "2 inputs rejected" in out.stdout, out.stdout + out.stderr
    listed = re.search(r"the rejections are listed by job (\S.*) \(GET", out.stdout)
    assert listed, out.stdout
    server = make_server(HASHING, data=data)
    with server.client() as c:
        found: dict[str, str] = {}
        for job_id in listed.group(1).split(", "):
            job = c.get(f"/v1/jobs/{job_id}").json()
            assert job["status"] == "done", job
            found.update(reasons(job))
        assert len(found) == 2, found
        csv_row = next(w for w in found if w.endswith("a.csv:3"))
        assert "malformed CSV" in found[csv_row]
        line = next(w for w in found if w.endswith("b.jsonl:2"))
        assert "no value for 'sku'" in found[line]
        r = c.post("/v1/collections/shop/query", json={"text": "A frying pan.", "k": 1})
        assert r.json()["hits"][0]["document_id"] == "j1"
