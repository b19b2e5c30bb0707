"""API fuzzing: schemathesis generates requests from /openapi.json against a real server.

Every response must be a non-5xx with a status the route declares, the declared content type
and a body matching the declared schema (a route's response model, ErrorOut for errors). The
run is bounded and seeded (hypothesis `derandomize`); the server must be healthy afterwards.
EMBEDSTACK_FUZZ_EXAMPLES raises the examples per operation for a longer local run.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.checks import not_a_server_error
from schemathesis.generation.modes import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.conftest import Server, server_env, wait_job

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("EMBEDSTACK_FUZZ_EXAMPLES", "8"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    data: Path = tmp_path_factory.mktemp("fuzz") / "data"
    server = Server(
        data, server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test", EMBEDSTACK_MAX_K="50")
    ).start()
    with server.client() as c:  # something for the generated requests to find
        assert c.post("/v1/collections", json={"name": "kb"}).status_code == 201
        docs = [
            {"id": f"d{i}", "text": f"document number {i} about topic {i % 7}"} for i in range(20)
        ]
        job = c.post("/v1/collections/kb/documents", json={"documents": docs}).json()
        assert wait_job(c, job["job_id"])["status"] == "done"
    yield server
    server.stop()


@pytest.fixture(scope="module")
def api_schema(fuzz_server: Server) -> schemathesis.BaseSchema:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def _fuzz(operation: Any, strategy: Any, failures: list[str], sent: list[int]) -> None:
    @given(case=strategy)
    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # seeded: the same requests every run
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: report, do not minimize
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        sent[0] += 1
        try:
            case.call_and_validate(checks=CHECKS, timeout=60)
        except (Exception, BaseExceptionGroup) as exc:  # collect them all, then report
            failures.append(f"{operation.label}: {exc}\n  {case.as_curl_command()}")

    with contextlib.suppress(Unsatisfiable):  # no invalid form of a route without inputs
        run()


def test_api_conforms(api_schema: schemathesis.BaseSchema) -> None:
    """Valid requests, invalid ones, and valid ones aimed at the seeded collection."""
    failures: list[str] = []
    sent = [0]
    for result in api_schema.get_all_operations():
        op = result.ok()
        strategies = [
            op.as_strategy(GenerationMode.POSITIVE),
            op.as_strategy(GenerationMode.NEGATIVE),
        ]
        if "{name}" in op.path and op.method.upper() != "DELETE":  # keep "kb" for the others
            strategies.append(op.as_strategy(path_parameters={"name": "kb"}))
        for strategy in strategies:
            _fuzz(op, strategy, failures, sent)
    assert sent[0] > 100
    assert not failures, f"{len(failures)} of {sent[0]} failed:\n" + "\n\n".join(failures[:20])


def test_healthy_after_fuzzing(fuzz_server: Server) -> None:
    with fuzz_server.client() as c:
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/collections/kb/query", json={"text": "document number 3", "k": 3})
        assert r.status_code == 200, r.text
        assert r.json()["hits"], "the seeded collection still answers"
    log = fuzz_server.log.read_text(errors="replace")
    assert "unhandled error" not in log, log[-3000:]
    assert httpx.get(f"{fuzz_server.url}/metrics").status_code == 200
