"""A shard replica without Ray or a broker: log records applied in order, idempotently, and a
reopened replica resumes from its stored position with its store and index intact."""

from __future__ import annotations

import functools
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import orjson
import pytest

from embedstack.cluster.catalog import ClusterCollection, SpaceRef
from embedstack.cluster.log import LogRecord
from embedstack.cluster.replica import ShardReplica
from embedstack.config import Settings
from embedstack.errors import Unavailable
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


def _space(action: str, space_id: str, model: str | None = None) -> bytes:
    return LogRecord(
        "space", space={"action": action, "space_id": space_id, "model": model}
    ).encode()


def test_a_snapshot_opens_as_a_replica_at_its_position(
    setup: tuple[ClusterCollection, functools.partial[ShardReplica]], tmp_path: Path
) -> None:
    """Shard transfer: a replica opened on another's snapshot (store copy + position) has its
    documents and searches alike, and converges with it on the rest of the log."""
    coll, make = setup
    source = make()
    records = [
        (0, LogRecord("put", (row("a", "alpha files"), row("b", "beta sockets"))).encode()),
        (1, LogRecord("put", (row("c", "gamma threads"),)).encode()),
        (2, LogRecord("delete", document_id="b").encode()),
        (3, LogRecord("put", (row("d", "delta queues"),)).encode()),
    ]
    source.apply(records[:2])
    copy_dir = tmp_path / "copy"
    copy_dir.mkdir()
    position = source.snapshot(copy_dir / "store.db")
    assert position == 2
    (copy_dir / "position.json").write_bytes(orjson.dumps({"position": position}))
    copy = ShardReplica(copy_dir, coll, 0, source._models)
    assert copy.position == 2 and copy.documents() == 3
    vec = np.asarray(source._models.get("hashing-test").embed_batch(["alpha files"])[0])
    ids = lambda r: [h["document_id"] for h in r.search(vec, 10, None, False)]  # noqa: E731
    assert ids(copy) == ids(source)
    for r in (source, copy):
        assert r.apply(records[position:]) == 4
    assert copy.documents() == source.documents() == 3
    assert ids(copy) == ids(source) and "b" not in ids(copy)
    source.close()
    copy.close()


def test_space_records_shadow_backfill_cutover_rollback_retire(
    setup: tuple[ClusterCollection, functools.partial[ShardReplica]],
) -> None:
    coll, make = setup
    replica = make()
    docs = [row(f"d{i}", f"document number {i} about files") for i in range(300)]
    replica.apply([(0, LogRecord("put", tuple(docs)).encode())])
    new = replica._models.get("hashing-test-b").spec.space_id
    assert LogRecord.decode(_space("shadow", new, "hashing-test-b")).space == {
        "action": "shadow", "space_id": new, "model": "hashing-test-b",
    }  # fmt: skip
    # the shadow record, then a write: the write goes to both spaces at once
    replica.apply([(1, _space("shadow", new, "hashing-test-b"))])
    replica.apply([(2, LogRecord("put", (row("late", "a late document"),)).encode())])
    assert replica.spaces()["upgrade"] == {
        "to_space": new, "state": "backfilling", "done": 0, "total": 300,
    }  # fmt: skip
    assert replica.backfill_step(batch=100)
    replica.close()  # a restart mid-back-fill resumes after the last document done
    replica = make()
    assert replica.spaces()["upgrade"]["done"] == 100
    while replica.backfill_step(batch=100):
        pass
    status = replica.spaces()
    assert status["upgrade"]["state"] == "ready" and status["upgrade"]["done"] == 300
    assert replica.stats()["vectors"] == {coll.space_id: 301, new: 301}
    vec = replica._models.get("hashing-test-b").embed_batch(["a late document"])[0]
    assert replica.search(np.asarray(vec), 1, None, False, new)[0]["document_id"] == "late"
    # a space the replica does not have is Unavailable (the router tries another replica)
    with pytest.raises(Unavailable):
        replica.search(np.asarray(vec), 1, None, False, "sp_missing")

    replica.apply([(3, _space("cutover", new))])
    assert replica.spaces()["spaces"] == {coll.space_id: "previous", new: "serving"}
    assert replica.spaces()["upgrade"]["state"] == "cut_over"
    replica.apply([(4, _space("cutover", new))])  # re-delivered: nothing changes
    replica.apply([(5, _space("rollback", coll.space_id))])
    assert replica.spaces()["spaces"] == {coll.space_id: "serving", new: "previous"}
    replica.apply([(6, _space("retire", new)), (7, _space("retire", coll.space_id))])
    assert replica.spaces()["spaces"] == {coll.space_id: "serving"}  # serving is never retired
    assert set(replica.stats()["vectors"]) == {coll.space_id}
    replica.close()


def test_a_new_replica_gets_the_catalogs_spaces(
    setup: tuple[ClusterCollection, functools.partial[ShardReplica]], tmp_path: Path
) -> None:
    coll, _ = setup
    models = build_models(Settings(enable_test_models=True, data_dir=tmp_path), {})
    new = models.get("hashing-test-b").spec.space_id
    upgraded = replace(
        coll, space_id=new, model="hashing-test-b", previous=SpaceRef(coll.space_id, "hashing-test")
    )
    replica = ShardReplica(tmp_path / "fresh", upgraded, 1, models)
    assert replica.spaces()["spaces"] == {coll.space_id: "previous", new: "serving"}
    # replaying the log from the start writes both spaces; the old records change nothing
    replica.apply([
        (0, LogRecord("put", (row("a", "alpha files"),)).encode()),
        (1, _space("shadow", new, "hashing-test-b")),
        (2, _space("cutover", new)),
    ])  # fmt: skip
    assert replica.stats()["vectors"] == {coll.space_id: 1, new: 1}
    assert replica.spaces()["spaces"] == {coll.space_id: "previous", new: "serving"}
    replica.close()


def test_a_config_record_rebuilds_the_index_and_survives_a_restart(
    setup: tuple[ClusterCollection, functools.partial[ShardReplica]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PATCH of a cluster collection: a `config` record stores the new query defaults and index
    settings and rebuilds the index (exact -> hnsw) before the position passes it; a restarted
    replica keeps them; a rebuild that fails keeps the old index serving and is reported."""
    coll, make = setup
    replica = make()
    docs = [row(f"d{i}", f"document {i} about topic {i % 7}") for i in range(40)]
    replica.apply([(0, LogRecord("put", tuple(docs)).encode())])
    vec = np.asarray(replica._models.get("hashing-test").embed_batch(["topic 3"])[0])
    scores = lambda: [round(h["score"], 5) for h in replica.search(vec, 5, None, False)]  # noqa: E731
    before = scores()
    hnsw = {"type": "hnsw", "params": {"M": 8, "ef_construction": 100, "ef_search": 64}}
    change = {"index": hnsw, "search": {"mode": "dense"}}
    assert LogRecord.decode(LogRecord("config", config=change).encode()).config == change
    assert replica.apply([(1, LogRecord("config", config=change).encode())]) == 2
    live = replica._indexes.get("docs", coll.space_id)
    assert live.config.type == "hnsw" and live.config.params["M"] == 8
    assert replica.coll.config.index.type == "hnsw"
    assert replica.coll.config.search == {"mode": "dense"}
    assert scores() == before  # the same answers (up to the order of ties) from the new index
    assert replica.stats()["rebuild_error"] is None
    replica.close()

    again = make()  # the actor's saved assignment still has the old settings
    assert again.coll.config.index.type == "hnsw" and again.position == 2
    assert again._indexes.get("docs", coll.space_id).config.type == "hnsw"

    def broken(record: object) -> None:
        raise RuntimeError("out of memory while training")

    monkeypatch.setattr(again._collections, "rebuild", broken)
    flat = {"index": {"type": "exact", "params": {}}, "search": {}}
    assert again.apply([(2, LogRecord("config", config=flat).encode())]) == 3
    assert "out of memory" in again.stats()["rebuild_error"]
    assert again._indexes.get("docs", coll.space_id).config.type == "hnsw"  # still serving
    again.close()
