"""Live indexes: each is derived from the store and kept current by replaying its change log.

One `LiveIndex` per (collection, space). Its `lock` serializes writers (sync, snapshot,
compaction); searches read the current `index` reference without it, so a swap (compaction,
rebuild) never blocks or breaks a query in flight.
"""

from __future__ import annotations

import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embedstack.errors import NotFound
from embedstack.index.base import VectorIndex
from embedstack.index.factory import create_index, load_index
from embedstack.obs.metrics import Metrics
from embedstack.storage.snapshot import read_snapshot, write_snapshot
from embedstack.storage.store import Store

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IndexConfig:
    collection: str
    space_id: str
    dim: int
    metric: str
    type: str
    params: dict[str, Any] = field(default_factory=dict)

    def manifest(self) -> dict[str, Any]:
        return {
            "space_id": self.space_id,
            "dim": self.dim,
            "metric": self.metric,
            "type": self.type,
            "params": self.params,
        }


class LiveIndex:
    def __init__(self, config: IndexConfig, index: VectorIndex, applied_seq: int) -> None:
        self.config = config
        self.index = index
        self.applied_seq = applied_seq
        self.snapshot_seq = -1
        self.lock = threading.Lock()


class IndexManager:
    def __init__(
        self, store: Store, root: Path, metrics: Metrics, compaction_ratio: float = 0.2
    ) -> None:
        self._store = store
        self._root = root
        self._metrics = metrics
        self._compaction_ratio = compaction_ratio
        self._live: dict[str, LiveIndex] = {}
        self._guard = threading.Lock()

    def _dir(self, cfg: IndexConfig) -> Path:
        return self._root / cfg.collection / cfg.space_id

    # -- lifecycle --------------------------------------------------------------------------
    def open(self, cfg: IndexConfig) -> LiveIndex:
        """Load the snapshot (if it matches the config) and replay later changes, else rebuild."""
        live = self._load(cfg) or self._rebuild(cfg)
        with self._guard:
            self._live[cfg.collection] = live
        self.sync(cfg.collection)
        return live

    def _load(self, cfg: IndexConfig) -> LiveIndex | None:
        snap = read_snapshot(self._dir(cfg))
        if snap is None:
            return None
        data, manifest = snap
        if {k: manifest.get(k) for k in cfg.manifest()} != cfg.manifest():
            log.info("snapshot of %s does not match its config; rebuilding", cfg.collection)
            return None
        try:
            index = load_index(data)
        except Exception:
            log.exception("snapshot of %s is unreadable; rebuilding from the store", cfg.collection)
            return None
        live = LiveIndex(cfg, index, int(manifest["seq"]))
        live.snapshot_seq = live.applied_seq
        return live

    def _rebuild(self, cfg: IndexConfig) -> LiveIndex:
        seq = self._store.max_seq(cfg.collection, cfg.space_id)
        index = create_index(cfg.type, cfg.dim, cfg.metric, cfg.params)
        for ids, vecs in self._store.iter_vectors(cfg.collection, cfg.space_id, cfg.dim):
            index.add(ids, vecs)
        return LiveIndex(cfg, index, seq)

    def drop(self, collection: str) -> None:
        with self._guard:
            live = self._live.pop(collection, None)
        if live is not None:
            shutil.rmtree(self._root / collection, ignore_errors=True)

    def get(self, collection: str) -> LiveIndex:
        live = self._live.get(collection)
        if live is None:
            raise NotFound(f"collection {collection!r} has no index open")
        return live

    def collections(self) -> list[str]:
        return list(self._live)

    # -- keeping current --------------------------------------------------------------------
    def sync(self, collection: str) -> int:
        """Apply every stored change not yet in the index. Returns the applied seq."""
        live = self._live.get(collection)
        if live is None:
            return 0
        with live.lock:
            cfg = live.config
            while True:
                changes = self._store.changes_since(cfg.collection, cfg.space_id, live.applied_seq)
                if not changes:
                    break
                net: dict[int, int] = {}
                for _, chunk_id, op in changes:
                    net[chunk_id] = op  # ids are never reused: the last op is the state
                adds = [i for i, op in net.items() if op > 0]
                removes = [i for i, op in net.items() if op < 0]
                if removes:
                    live.index.remove(np.asarray(removes, dtype=np.int64))
                if adds:
                    ids, vecs = self._store.chunk_vectors(adds, cfg.dim)
                    live.index.add(ids, vecs)
                live.applied_seq = changes[-1][0]
            self._maybe_compact(live)
            self._observe(live)
            return live.applied_seq

    def sync_all(self) -> None:
        for name in self.collections():
            self.sync(name)

    def _maybe_compact(self, live: LiveIndex) -> None:
        ratio_of = getattr(live.index, "tombstone_ratio", None)
        compacted = getattr(live.index, "compacted", None)
        if ratio_of is None or compacted is None or ratio_of() <= self._compaction_ratio:
            return
        started = time.perf_counter()
        live.index = compacted()  # readers keep the reference they started with
        log.info(
            "compacted %s in %.2fs (%d live vectors)",
            live.config.collection,
            time.perf_counter() - started,
            live.index.count(),
        )

    def _observe(self, live: LiveIndex) -> None:
        name = live.config.collection
        self._metrics.vectors.labels(name).set(live.index.count())
        self._metrics.index_memory.labels(name).set(live.index.memory_bytes())
        ratio_of = getattr(live.index, "tombstone_ratio", None)
        tomb = ratio_of() * live.index.count() / max(1e-9, 1 - ratio_of()) if ratio_of else 0
        self._metrics.tombstones.labels(name).set(round(tomb))

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self, collection: str) -> bool:
        """Write a snapshot if the index moved since the last one. Returns whether it wrote."""
        live = self._live.get(collection)
        if live is None:
            return False
        with live.lock:
            if live.applied_seq == live.snapshot_seq:
                return False
            manifest = {**live.config.manifest(), "seq": live.applied_seq,
                        "count": live.index.count(), "written_at": time.time()}  # fmt: skip
            write_snapshot(
                self._dir(live.config), f"snap-{live.applied_seq}", live.index.save, manifest
            )
            live.snapshot_seq = live.applied_seq
            return True

    def snapshot_all(self) -> None:
        for name in self.collections():
            try:
                self.snapshot(name)
            except OSError:
                log.exception("snapshot of %s failed; will retry", name)

    # -- reading ----------------------------------------------------------------------------
    def search(
        self, collection: str, queries: np.ndarray, k: int, allow: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        live = self.get(collection)
        started = time.perf_counter()
        out = live.index.search(queries, k, allow)
        self._metrics.search_latency.labels(collection).observe(time.perf_counter() - started)
        return out
