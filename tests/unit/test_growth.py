"""What grows with use is bounded: the change log is cut at each snapshot, done jobs are purged,
and a deleted collection's metric series disappear."""

from __future__ import annotations

import time
from pathlib import Path

from starlette.testclient import TestClient

from embedstack.serving.app import create_app
from embedstack.serving.services import Services
from tests.conftest import in_process_settings


def _changes(services: Services) -> int:
    row = services.store._reader().execute("SELECT count(*) FROM changes").fetchone()
    return int(row[0])


def test_the_change_log_is_cut_at_snapshots_and_metrics_of_deleted_collections_go(
    tmp_path: Path,
) -> None:
    settings = in_process_settings(
        tmp_path,
        snapshot_interval_s=0.1,
        sync_interval_s=0.05,
    )
    services = Services.build(settings)
    with TestClient(create_app(services)) as client:
        docs = [{"id": f"d{i}", "text": f"document number {i}"} for i in range(50)]
        for name in ("kept", "gone"):
            assert client.post("/v1/collections", json={"name": name}).status_code == 201
            path = f"/v1/collections/{name}/documents"
            job = client.post(path, json={"documents": docs}).json()
        for _ in range(1200):  # snapshots are paced by their cost: up to a minute on a busy box
            status = client.get(f"/v1/jobs/{job['job_id']}").json()["status"]
            if status == "done" and _changes(services) <= 2:
                break
            time.sleep(0.05)
        assert _changes(services) <= 2, "the change log was not cut after a snapshot"
        assert (
            client.post("/v1/collections/gone/query", json={"text": "number 7"}).status_code == 200
        )
        assert 'collection="gone"' in client.get("/metrics").text
        assert client.delete("/v1/collections/gone").status_code == 200
        assert 'collection="gone"' not in client.get("/metrics").text
        late = {"documents": [{"id": "new", "text": "late"}]}
        job = client.post("/v1/collections/kept/documents", json=late).json()
        for _ in range(1200):
            if client.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "done":
                break
            time.sleep(0.05)
    # a restart loads the snapshot and replays what came after: nothing cut is missing
    services = Services.build(settings)
    with TestClient(create_app(services)) as client:
        assert client.get("/v1/collections/kept").json()["vectors"] == 51
