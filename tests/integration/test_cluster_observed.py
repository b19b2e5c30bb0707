"""What cluster API nodes share in the catalog's Redis (cluster/observed.py), on a real
redis-server: feedback bounded per collection space (the oldest queries and their marks go
together), marks never lost to concurrent marks, the audit stream capped and paged per
tenant, the drift baseline filled once for every node."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from embedstack.cluster.observed import (
    ClusterAudit,
    ClusterBaselines,
    ClusterFeedback,
    SharedDrift,
)
from embedstack.errors import NotFound
from embedstack.infra.local import LocalProcess


@pytest.fixture
def client(redis_broker: LocalProcess) -> Iterator[Any]:
    import redis

    r = redis.Redis.from_url(f"redis://{redis_broker.address}/2")
    yield r
    r.close()


def _prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}"


def test_feedback_is_bounded_per_space_with_its_marks(client: Any) -> None:
    fb = ClusterFeedback(client, _prefix(), max_queries=100, k=10)
    docs = [f"d{i}" for i in range(5)]
    ids = [fb.remember("c", "topic", "sp", docs) for _ in range(60)]
    for qid in ids[:10]:  # the 10 oldest clicked at rank 2
        assert fb.record(qid, "d1", "click") == (("c", "sp"), 2)
    fb.record(ids[59], "d0", "click")
    stats = fb.stats("topic", "sp")
    assert (stats.queries, stats.clicked) == (60, 11)
    assert stats.click_through == pytest.approx(11 / 60)
    assert stats.clicked_mrr == pytest.approx((10 * 0.5 + 1.0) / 11)
    ids += [fb.remember("c", "topic", "sp", docs) for _ in range(60)]  # 120: the oldest 20 go
    stats = fb.stats("topic", "sp")
    assert (stats.queries, stats.clicked, stats.clicked_mrr) == (100, 1, 1.0)
    with pytest.raises(NotFound):
        fb.record(ids[0], "d0", "click")
    assert fb.owner(ids[0]) is None and fb.owner(ids[20]) == "c"
    assert fb.stats("topic", "other").queries == 0  # another space of the collection


def test_concurrent_marks_on_one_query_are_all_kept(client: Any) -> None:
    fb = ClusterFeedback(client, _prefix(), max_queries=100, k=10)
    docs = [f"d{i}" for i in range(8)]
    qid = fb.remember("c", "topic", "sp", docs)
    errors: list[BaseException] = []

    def grade(doc: str) -> None:
        try:
            fb.record(qid, doc, "grade", 2)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=grade, args=(d,)) for d in reversed(docs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not errors
    import orjson

    record = orjson.loads(client.get(f"{fb._records}{qid}"))
    assert record["grades"] == {d: 2 for d in docs}  # no grade lost to a concurrent one
    assert record["first_click"] == 1
    stats = fb.stats("topic", "sp")
    assert (stats.queries, stats.clicked, stats.graded) == (1, 1, 1)


def test_audit_is_capped_paged_and_per_tenant(client: Any) -> None:
    audit = ClusterAudit(client, _prefix(), max_entries=100)
    for i in range(300):
        audit.add_audit("k1", "acme", "POST /v1/keys", None, 201, {"n": i})
    audit.add_audit("k2", "other", "DELETE /v1/collections/{name}", "docs", 200)
    newest = audit.audit("acme", limit=5)
    assert [e.detail["n"] for e in newest] == [299, 298, 297, 296, 295]
    assert all(e.tenant == "acme" and e.key_prefix == "k1" for e in newest)
    page = audit.audit("acme", limit=3, before=newest[-1].id)
    assert [e.detail["n"] for e in page] == [294, 293, 292]
    kept = audit.audit("acme", limit=1000)
    assert 100 <= len(kept) < 300  # capped (approximately, as Redis trims whole nodes)
    (theirs,) = audit.audit("other")
    assert theirs.collection == "docs" and theirs.id > newest[0].id  # one id sequence
    assert audit.audit("acme", before=1) == []


def test_the_drift_baseline_fills_once_for_every_node(client: Any) -> None:
    prefix = _prefix()
    a, b = (SharedDrift(ClusterBaselines(client, prefix, 20), 20, 10, 0.25) for _ in range(2))

    def query(node: SharedDrift, top1: float) -> None:
        with client.pipeline(transaction=False) as pipe:
            appended = node.record("topic", "sp", top1, 1.0, pipe)
            answers = pipe.execute()
        if appended:
            node.appended("topic", "sp", int(answers[-1]), top1, 1.0)

    for i in range(12):
        query(a, 0.9 + i * 0.001)
        query(b, 0.9 + i * 0.001)  # 24 queries, 20 fill the baseline, 4 go to windows
    assert a.evaluate("topic", "sp").state == b.evaluate("topic", "sp").state == "collecting window"
    for _ in range(12):
        query(b, 0.1)  # node B's window: far lower scores
    report = b.evaluate("topic", "sp")
    assert report.state == "drift" and report.baseline_queries == 20 and report.psi["top1_score"]
    assert a.evaluate("topic", "sp").state == "collecting window"  # A's own window is small
    a.reset("topic", "sp")
    assert b.evaluate("topic", "sp").state == "collecting baseline"
