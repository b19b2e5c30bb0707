"""One maintenance pass's failure never stops later passes: snapshots keep being written."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from embedstack.serving.app import SNAPSHOT_SHARE, create_app, snapshot_pause
from embedstack.serving.services import Services
from tests.conftest import in_process_settings


def test_a_failing_upgrade_refresh_does_not_stop_snapshots(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = in_process_settings(
        tmp_path,
        snapshot_interval_s=0.1,
        sync_interval_s=0.05,
    )
    services = Services.build(settings)

    async def broken() -> None:
        raise TypeError("'<=' not supported between instances of 'str' and 'float'")

    monkeypatch.setattr(services.upgrades, "refresh", broken)
    with TestClient(create_app(services)) as client:
        assert client.post("/v1/collections", json={"name": "c"}).status_code == 201
        job = client.post(
            "/v1/collections/c/documents", json={"documents": [{"id": "a", "text": "hi"}]}
        ).json()
        snaps: list[Path] = []
        for _ in range(200):
            done = client.get(f"/v1/jobs/{job['job_id']}").json()["status"] == "done"
            snaps = list((tmp_path / "data" / "indexes" / "c").glob("*/snap-*"))
            if done and snaps:
                break
            time.sleep(0.05)
        assert snaps, "no snapshot was written while upgrade refresh kept failing"
        metrics = client.get("/metrics").text
        assert 'embedstack_maintenance_errors_total{step="upgrades"}' in metrics
        assert client.get("/readyz").status_code == 200


def test_snapshots_of_a_big_index_are_paced_by_their_cost() -> None:
    assert snapshot_pause(30.0, 0.01) == 30.0  # a small index: the interval
    assert snapshot_pause(30.0, 6.0) == pytest.approx(6.0 / SNAPSHOT_SHARE)  # 5% of the time
    assert snapshot_pause(30.0, 6.0) > 30.0
