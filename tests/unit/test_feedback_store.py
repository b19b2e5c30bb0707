"""The durable feedback log (storage/feedback.py under obs/feedback.py): marks committed before
they are acknowledged, answered queries flushed in batches, reload at start, trim, forget, and a
broken file that does not stop the server."""

from __future__ import annotations

from pathlib import Path

import pytest

from embedstack.errors import NotFound
from embedstack.obs.feedback import FeedbackLog
from embedstack.storage.feedback import FEEDBACK, FeedbackStore


def test_marks_survive_a_reopen_flushed_or_not(tmp_path: Path) -> None:
    path = tmp_path / FEEDBACK
    log = FeedbackLog(max_queries=100, k=2, durable=FeedbackStore(path))
    flushed = log.remember("c", "s", ["d1", "d2", "d3"])
    log.flush()
    clicked = log.remember("c", "s", ["d4", "d5"])  # never flushed: the mark writes it whole
    unflushed = log.remember("c", "s", ["d6"])  # lost with the process (not acknowledged)
    assert log.record(clicked, "d5", "click")[1] == 2
    log.record(flushed, "d1", "grade", 3)

    again = FeedbackLog(max_queries=100, k=2, durable=FeedbackStore(path))  # as after kill -9
    stats = again.stats(("c", "s"))
    assert (stats.queries, stats.clicked, stats.graded) == (2, 2, 1)
    assert stats.clicked_mrr == pytest.approx((1 / 2 + 1) / 2)
    assert again.owner(flushed) == ("c", "s")
    with pytest.raises(NotFound):
        again.record(unflushed, "d6", "click")
    again.record(flushed, "d2", "click")  # a worse rank keeps the best click
    assert again.stats(("c", "s")).clicked_mrr == pytest.approx((1 / 2 + 1) / 2)


def test_trim_keeps_the_newest_and_forget_drops_a_collection(tmp_path: Path) -> None:
    store = FeedbackStore(tmp_path / FEEDBACK)
    log = FeedbackLog(max_queries=3, k=10, durable=store)
    ids = [log.remember("c" if i % 2 else "gone", "s", [f"d{i}"]) for i in range(6)]
    log.flush()
    assert [r.query_id for r in store.load(10)] == ids[3:]  # trimmed to the newest 3
    log.record(ids[5], "d5", "click")
    log.forget("gone")
    assert {r.collection for r in store.load(10)} == {"c"}
    reloaded = FeedbackLog(max_queries=3, k=10, durable=FeedbackStore(tmp_path / FEEDBACK))
    assert reloaded.keys() == {("c", "s")}
    assert reloaded.stats(("c", "s")).clicked == 1
    assert log.stats(("gone", "s")).queries == 0


def test_a_broken_file_is_moved_aside_and_feedback_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / FEEDBACK
    path.write_bytes(b"this is not a database" * 100)
    log = FeedbackLog(max_queries=10, k=10, durable=FeedbackStore(path))
    assert log.keys() == set()
    assert [p.name for p in tmp_path.glob(f"{FEEDBACK}.broken-*")]
    qid = log.remember("c", "s", ["d1"])
    log.record(qid, "d1", "click")
    assert FeedbackLog(10, 10, FeedbackStore(path)).stats(("c", "s")).clicked == 1
