"""/readyz answers 503 with the reason when a node cannot do its work: a worker that cannot reach
the queue (or died), a dead batcher, a stuck maintenance loop."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from embedstack.errors import Unavailable
from embedstack.serving.app import create_app
from embedstack.serving.services import Services
from tests.conftest import in_process_settings


@pytest.fixture()
def node(tmp_path: Path) -> Iterator[tuple[Services, TestClient]]:
    settings = in_process_settings(
        tmp_path,
    )
    services = Services.build(settings)
    with TestClient(create_app(services)) as client:
        yield services, client


def _wait_status(client: TestClient, status: int) -> dict[str, Any]:
    for _ in range(200):
        r = client.get("/readyz")
        if r.status_code == status:
            return dict(r.json())
        time.sleep(0.02)
    raise AssertionError(f"/readyz stayed {r.status_code}: {r.text}")


def test_a_worker_that_cannot_reach_the_queue_makes_the_node_unready(
    node: tuple[Services, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, client = node
    assert client.get("/readyz").status_code == 200
    worker = services.workers[0]
    worker._config = dataclasses.replace(worker._config, unhealthy_after=0.05)

    def locked(*_: object) -> None:
        raise Unavailable("queue database stayed locked for over 10 s")

    monkeypatch.setattr(services.queue, "lease", locked)
    body = _wait_status(client, 503)
    assert any("worker" in p and "locked" in p for p in body["problems"]), body
    monkeypatch.undo()  # the lock clears: the same worker carries on
    _wait_status(client, 200)
    r = client.post("/v1/collections", json={"name": "c"})
    assert r.status_code == 201, r.text
    job = client.post(
        "/v1/collections/c/documents", json={"documents": [{"id": "a", "text": "hello"}]}
    ).json()
    for _ in range(200):
        if client.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "done":
            break
        time.sleep(0.02)
    assert client.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "done"


def test_a_dead_batcher_makes_the_node_unready(node: tuple[Services, TestClient]) -> None:
    services, client = node
    batcher = services.batchers["hashing-test"]
    owner = batcher._owner
    assert owner is not None
    owner.get_loop().call_soon_threadsafe(owner.cancel)
    body = _wait_status(client, 503)
    assert any("batcher" in p for p in body["problems"]), body


def test_a_stuck_maintenance_loop_makes_the_node_unready(
    node: tuple[Services, TestClient], monkeypatch: pytest.MonkeyPatch
) -> None:
    services, client = node
    release = threading.Event()
    monkeypatch.setattr(services.indexes, "sync_all", lambda: release.wait(10))
    time.sleep(0.5)  # the loop is now inside a pass that does not end
    services.maintenance_beat -= 10_000
    body = _wait_status(client, 503)
    assert any("maintenance" in p for p in body["problems"]), body
    release.set()
    _wait_status(client, 200)
