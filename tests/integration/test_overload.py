"""Admission control sheds load with 429 + Retry-After; a gone client's texts never reach the model."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.conftest import Server, server_env

LONG = "Embedding models turn text into vectors that capture meaning. " * 20


@pytest.fixture(scope="module")
def tight_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    env = server_env(EMBEDSTACK_MAX_PENDING="16", EMBEDSTACK_MAX_PENDING_BULK="8",
                     EMBEDSTACK_MAX_BATCH_SIZE="4")  # fmt: skip
    server = Server(tmp_path_factory.mktemp("tight") / "data", env).start()
    yield server
    server.stop()


def _metric(server: Server, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_overload_sheds_with_429_and_recovers(tight_server: Server) -> None:
    def call(i: int) -> httpx.Response:
        body = {"input": [f"{i} {j} {LONG}" for j in range(8)]}
        return httpx.post(f"{tight_server.url}/v1/embeddings", json=body, timeout=120)

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(call, range(48)))
    codes = [r.status_code for r in answers]
    assert set(codes) <= {200, 429}, codes
    assert 429 in codes and 200 in codes, codes
    shed = next(r for r in answers if r.status_code == 429)
    assert int(shed.headers["retry-after"]) >= 1
    assert "retry" in shed.json()["error"]["message"].lower()
    assert _metric(tight_server, "embedstack_batcher_rejected_total") >= codes.count(429)
    ok = httpx.post(f"{tight_server.url}/v1/embeddings", json={"input": "fine"}, timeout=60)
    assert ok.status_code == 200


def test_request_over_capacity_is_422(tight_server: Server) -> None:
    r = httpx.post(f"{tight_server.url}/v1/embeddings", json={"input": ["x"] * 17}, timeout=60)
    assert r.status_code == 422 and "split" in r.json()["error"]["message"]


def test_disconnected_client_texts_are_dropped(tight_server: Server) -> None:
    before = _metric(tight_server, "embedstack_batcher_dropped_total")
    body = httpx.Request(
        "POST",
        f"{tight_server.url}/v1/embeddings",
        json={"input": [f"{j} {LONG}" for j in range(16)]},
    ).read()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", tight_server.port), timeout=10) as s:
            s.sendall(head + body)
            time.sleep(0.05)  # the request is admitted; then the client goes away
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if _metric(tight_server, "embedstack_batcher_dropped_total") > before:
            break
        time.sleep(0.1)
    assert _metric(tight_server, "embedstack_batcher_dropped_total") > before
    assert httpx.get(f"{tight_server.url}/healthz").status_code == 200
