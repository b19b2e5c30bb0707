"""A shard replica without Ray or a broker: log records applied in order, idempotently, and a
reopened replica resumes from its stored position with its store and index intact."""

from __future__ import annotations

import functools
import time
from pathlib import Path

import numpy as np
import pytest

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.log import LogRecord
from embedstack.cluster.replica import ShardReplica
from embedstack.config import Settings
from embedstack.ingest.chunking import content_hash
from embedstack.registry.collections import CollectionConfigs
from embedstack.serving.services import build_models
from embedstack.storage.store import DocumentRow

pytestmark = pytest.mark.usefixtures("single_omp_thread")


def row(doc_id: str, text: str) -> DocumentRow:
    return DocumentRow(doc_id, text, {"n": len(text)}, content_hash(text, {"n": len(text)}))


@pytest.fixture()
def setup(tmp_path: Path) -> tuple[ClusterCollection, functools.partial[ShardReplica]]:
    settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=tmp_path)
    models = build_models(settings, {})
    config, space = CollectionConfigs(models, "hashing-test").config_for(
        "docs", index={"type": "exact"}
    )
    coll = ClusterCollection("docs", config, space, time.time(), "t", 4, 2)
    return coll, functools.partial(ShardReplica, tmp_path / "r", coll, 0, models)


def test_log_record_round_trip_with_vectors() -> None:
    vec = np.arange(4, dtype=np.float32).tobytes()
    rec = LogRecord("put", (DocumentRow("a", "t", {"k": [1]}, "h", vec),))
    assert LogRecord.decode(rec.encode()) == rec
    gone = LogRecord("delete", document_id="a")
    assert LogRecord.decode(gone.encode()) == gone


def test_apply_is_ordered_idempotent_and_resumes(
    setup: tuple[ClusterCollection, functools.partial[ShardReplica]],
) -> None:
    _, make = setup
    replica = make()
    assert replica.position == 0
    records = [
        (0, LogRecord("put", (row("a", "alpha files"), row("b", "beta sockets"))).encode()),
        (1, LogRecord("put", (row("a", "alpha files, second version"),)).encode()),
        (2, LogRecord("delete", document_id="b").encode()),
        (3, LogRecord("put", (row("c", "gamma threads"),)).encode()),
    ]
    assert replica.apply(records) == 4
    assert replica.documents() == 2
    vec = np.asarray(replica._models.get("hashing-test").embed_batch(["alpha"])[0])
    hits = replica.search(vec, 10, None, False)
    assert {h["document_id"] for h in hits} == {"a", "c"}
    assert next(h for h in hits if h["document_id"] == "a")["text"].endswith("second version")
    replica.close()

    again = make()  # a restarted actor: store, index and position come back from disk
    assert again.position == 4
    assert {h["document_id"] for h in again.search(vec, 10, None, False)} == {"a", "c"}
    # a re-delivered tail (the position write was lost in a crash) changes nothing
    assert again.apply(records[2:]) == 4
    assert again.documents() == 2
    assert len(again.search(vec, 10, None, False)) == len(hits)
    # filters push down to the shard's own store
    only = again.search(vec, 10, {"n": len("gamma threads")}, False)
    assert [h["document_id"] for h in only] == ["c"]
    again.close()
