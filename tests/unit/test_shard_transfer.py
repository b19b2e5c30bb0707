"""Shard transfer in pieces, without Ray: a real replica's snapshot sent through Outgoing in
pieces no larger than the piece size, checked against the source's sha256, and opened as a
replica with the source's documents and position; a damaged piece leaves no store behind."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.log import LogRecord
from embedstack.cluster.ray.transfer import Outgoing, receive
from embedstack.cluster.replica import ShardReplica
from embedstack.config import Settings
from embedstack.errors import Unavailable
from embedstack.ingest.chunking import content_hash
from embedstack.registry.collections import CollectionConfigs
from embedstack.serving.services import build_models
from embedstack.storage.store import DocumentRow

pytestmark = pytest.mark.usefixtures("single_omp_thread")
PIECE = 4096


def test_a_snapshot_travels_in_checked_pieces(tmp_path: Path) -> None:
    settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=tmp_path)
    models = build_models(settings, {})
    config, space = CollectionConfigs(models, "hashing-test").config_for("docs")
    coll = ClusterCollection("docs", config, space, time.time(), "t", 1, 2)
    source = ShardReplica(tmp_path / "source", coll, 0, models)
    rows = tuple(
        DocumentRow(f"d{i}", f"document {i} on topic {i % 7}", {}, content_hash(f"{i}", {}))
        for i in range(60)
    )
    assert source.apply([(0, LogRecord("put", rows[:30]).encode())]) == 1
    assert source.apply([(1, LogRecord("put", rows[30:]).encode())]) == 2
    outgoing = Outgoing(tmp_path / "outgoing")
    sizes: list[int] = []

    def call(method: str, *args: Any) -> Any:
        if method == "snapshot_open":
            return outgoing.open(source)
        got = getattr(outgoing, method.removeprefix("snapshot_"))(*args)
        if method == "snapshot_piece":
            sizes.append(len(got))
        return got

    note = receive(call, "docs", 0, tmp_path / "copy", PIECE)
    assert note["position"] == 2 and note["pieces"] == len(sizes) > 1
    assert max(sizes) <= PIECE and sum(sizes) == note["bytes"]
    assert not list((tmp_path / "outgoing").iterdir())  # closed: the source's copy is gone
    copy = ShardReplica(tmp_path / "copy", coll, 0, models)
    assert copy.position == 2 and copy.documents() == source.documents() == 60

    def damaged(method: str, *args: Any) -> Any:
        got = call(method, *args)
        return got[:-1] + bytes([got[-1] ^ 1]) if method == "snapshot_piece" else got

    with pytest.raises(Unavailable, match="arrived damaged"):
        receive(damaged, "docs", 0, tmp_path / "bad", PIECE)
    assert not list((tmp_path / "bad").iterdir())
    for replica in (source, copy):
        replica.close()
