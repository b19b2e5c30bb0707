"""Diagnosis of a data directory (the `embedstack doctor` command): SQLite integrity of the
store and the queue, every index snapshot against its checksums, and every index against the
store: the snapshot plus the change log replayed after it (what a server would serve after a
restart) must hold exactly the store's chunk ids. Read-only; safe while a server runs."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embedstack.inference.backend import ModelRegistry
from embedstack.ingest.brokers.url import KAFKA_STATE_GLOB
from embedstack.ingest.queue import SqliteQueue
from embedstack.obs.metrics import Metrics
from embedstack.registry.indexes import IndexConfig, IndexManager
from embedstack.storage.backup import INDEXES, QUEUE, STORE, integrity_check
from embedstack.storage.snapshot import CURRENT, current_snapshot, verify_snapshot
from embedstack.storage.store import Store

Level = Literal["ok", "warn", "fail"]
ORDER: dict[Level, int] = {"ok": 0, "warn": 1, "fail": 2}


@dataclass
class Finding:
    level: Level
    what: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "what": self.what, "detail": self.detail}


@dataclass
class Diagnosis:
    findings: list[Finding] = field(default_factory=list)
    indexes: list[dict[str, Any]] = field(default_factory=list)

    def add(self, level: Level, what: str, detail: str) -> None:
        self.findings.append(Finding(level, what, detail))

    @property
    def verdict(self) -> Level:
        return max((f.level for f in self.findings), key=ORDER.__getitem__, default="ok")

    def as_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict,
            "findings": [f.as_dict() for f in self.findings],
            "indexes": self.indexes,
        }


def diagnose(data: Path) -> Diagnosis:
    data = Path(data)
    out = Diagnosis()
    # the queue file exists only with the embedded queue; with --queue kafka:// the node keeps
    # its job state table(s) instead, and with redis:// nothing here
    queue_files = [QUEUE] if (data / QUEUE).exists() else []
    queue_files += sorted(p.name for p in data.glob(KAFKA_STATE_GLOB))
    if not queue_files:
        out.add("ok", "queue", f"no {QUEUE}: the queue is on a broker (--queue) or never opened")
    for name in (STORE, *queue_files):
        problems = integrity_check(data / name)
        if problems:
            out.add("fail", f"{name} integrity", "; ".join(problems))
        else:
            out.add("ok", f"{name} integrity", "PRAGMA integrity_check: ok")
    if not (data / STORE).exists():
        return out
    _check_snapshots(data, out)
    store = Store(data / STORE)
    try:
        _check_store(store, out)
        _check_indexes(store, data, out)
    finally:
        store.close()
    if (data / QUEUE).exists():
        queue = SqliteQueue(data / QUEUE)
        try:
            counts = queue.counts()
        finally:
            queue.close()
        level: Level = "warn" if counts["dead"] else "ok"
        out.add(level, "queue", ", ".join(f"{n} {s}" for s, n in counts.items()))
    return out


def _check_snapshots(data: Path, out: Diagnosis) -> None:
    root = data / INDEXES
    for current in sorted(root.glob(f"*/*/{CURRENT}")) if root.is_dir() else []:
        rel = current.parent.relative_to(root).as_posix()
        found = current_snapshot(current.parent)
        if found is None:
            out.add("warn", f"snapshot {rel}", "unreadable: the index is rebuilt from the store")
            continue
        snap, manifest = found
        problems = verify_snapshot(snap / "data", manifest)
        if problems:
            out.add(
                "warn",
                f"snapshot {rel}",
                f"{snap.name}: {'; '.join(problems[:5])}: rebuilt from the store at load",
            )
        else:
            out.add("ok", f"snapshot {rel}", f"{snap.name}: checksums match")


def _check_store(store: Store, out: Diagnosis) -> None:
    r = store._reader()
    dupes = r.execute(
        "SELECT count(*) FROM (SELECT 1 FROM chunks GROUP BY collection, space_id, document_id,"
        " ordinal HAVING count(*) > 1)"
    ).fetchone()[0]
    orphans = r.execute(
        "SELECT count(*) FROM chunks c LEFT JOIN documents d"
        " ON d.collection=c.collection AND d.id=c.document_id WHERE d.id IS NULL"
    ).fetchone()[0]
    if dupes or orphans:
        out.add(
            "fail",
            "store chunks",
            f"{dupes} duplicated chunk positions, {orphans} chunks without a document",
        )
    else:
        out.add("ok", "store chunks", "no duplicated or orphaned chunks")
    pending = sum(len(ids) for ids in store.pending_documents().values())
    out.add(
        "warn" if pending else "ok",
        "documents pending",
        f"{pending} stored documents not yet indexed (re-enqueued at start-up)",
    )


def _check_indexes(store: Store, data: Path, out: Diagnosis) -> None:
    from embedstack.registry.collections import CollectionService  # index_config's one home

    # snapshots are read from data/indexes; the manager writes nothing (no snapshot calls)
    manager = IndexManager(store, data / INDEXES, Metrics())
    configs = CollectionService(store, ModelRegistry(), manager, "")
    for record in store.list_collections():
        for space in store.spaces(record.name):
            cfg = configs.index_config(record, space)
            where = f"index {record.name}/{space.space_id}"
            try:
                entry = _compare(store, manager, cfg)
            except Exception as exc:  # a broken index is a finding, not a crash
                out.add("fail", where, repr(exc))
                continue
            out.indexes.append(entry)
            ok = entry["missing"] == 0 and entry["extra"] == 0
            out.add(
                "ok" if ok else "fail",
                where,
                f"{entry['index']} ids served, {entry['store']} chunks stored, "
                f"{entry['missing']} missing, {entry['extra']} extra",
            )


def _compare(store: Store, manager: IndexManager, cfg: IndexConfig) -> dict[str, Any]:
    """Open the index as a server would (snapshot + replay), then compare its ids with the
    store's: remove() on this private copy says how many of the store's ids it holds."""
    live = manager.open(cfg)
    with live.lock:
        served = live.index.count()
        ids = np.asarray(store.all_chunk_ids(cfg.collection, cfg.space_id), dtype=np.int64)
        present = live.index.remove(ids) if len(ids) else 0
    return {
        "collection": cfg.collection,
        "space_id": cfg.space_id,
        "type": cfg.type,
        "index": served,
        "store": len(ids),
        "missing": len(ids) - present,
        "extra": served - present,
        "seq": live.applied_seq,
    }
