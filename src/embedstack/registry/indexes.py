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
import orjson

from embedstack.errors import Conflict, NotFound
from embedstack.fsutil import atomic_write
from embedstack.index.base import MaintainedIndex
from embedstack.index.factory import create_index, load_index
from embedstack.index.params import check_knobs
from embedstack.obs.metrics import Metrics
from embedstack.registry.filtering import FilterColumns, positioned
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
    def __init__(self, config: IndexConfig, index: MaintainedIndex, applied_seq: int) -> None:
        self.config = config
        self.index = index
        self.applied_seq = applied_seq
        self.snapshot_seq = -1
        self.lock = threading.Lock()
        self.filters: FilterColumns | None = None  # made by the first filtered search


Key = tuple[str, str]  # (collection, space id)


class IndexManager:
    def __init__(
        self, store: Store, root: Path, metrics: Metrics, compaction_ratio: float = 0.2
    ) -> None:
        self._store = store
        self._root = root
        self._metrics = metrics
        self._compaction_ratio = compaction_ratio
        self._live: dict[Key, LiveIndex] = {}
        self._guard = threading.Lock()

    def _dir(self, cfg: IndexConfig) -> Path:
        return self._root / cfg.collection / cfg.space_id

    # -- lifecycle --------------------------------------------------------------------------
    def open(self, cfg: IndexConfig) -> LiveIndex:
        """Load the snapshot (if it matches the config) and replay later changes, else rebuild."""
        key = (cfg.collection, cfg.space_id)
        existing = self._live.get(key)
        if existing is not None and existing.config == cfg:
            return existing
        live = self._load(cfg) or self._rebuild(cfg)
        with self._guard:
            self._live[key] = live
        self.sync(*key)
        self._warm_filters(live)
        return live

    def replace(self, cfg: IndexConfig) -> LiveIndex:
        """Build an index with new settings aside, catch it up, and swap it in atomically."""
        key = (cfg.collection, cfg.space_id)
        before = self._live.get(key)
        fresh = self._rebuild(cfg)
        self._catch_up(fresh)
        old = self._live.get(key)
        if old is not before:  # dropped (deleted, maybe re-created) or replaced meanwhile
            raise Conflict(f"the index of {cfg.collection!r} changed while it was rebuilt")
        if old is None:
            with self._guard:
                self._live[key] = fresh
            return fresh
        fresh.filters = old.filters  # its columns move to the new positions on the next filter
        with old.lock:  # no writes land on the old index while we swap
            self._catch_up(fresh)
            with self._guard:
                if self._live.get(key) is not old:
                    raise Conflict(f"the index of {cfg.collection!r} changed while it was rebuilt")
                self._live[key] = fresh
        shutil.rmtree(self._dir(old.config), ignore_errors=True)
        self.snapshot(*key)
        return fresh

    def _load(self, cfg: IndexConfig) -> LiveIndex | None:
        snap = read_snapshot(self._dir(cfg))
        if snap is None:
            return None
        data, manifest = snap
        if {k: manifest.get(k) for k in cfg.manifest()} != cfg.manifest():
            log.info("snapshot of %s does not match its config; rebuilding", cfg.collection)
            return None
        if int(manifest.get("seq", -1)) > self._store.max_seq(cfg.collection, cfg.space_id):
            log.warning(
                "snapshot of %s is ahead of the store (seq %s); rebuilding from the store",
                cfg.collection, manifest.get("seq"),
            )  # fmt: skip
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

    def drop(self, collection: str, space_id: str | None = None) -> None:
        with self._guard:
            keys = [k for k in self._live if k[0] == collection and space_id in (None, k[1])]
            for key in keys:
                del self._live[key]
        target = self._root / collection
        shutil.rmtree(target if space_id is None else target / space_id, ignore_errors=True)
        if space_id is not None:
            self._keys_file(collection, space_id).unlink(missing_ok=True)

    def get(self, collection: str, space_id: str) -> LiveIndex:
        live = self._live.get((collection, space_id))
        if live is None:
            raise NotFound(f"collection {collection!r} has no open index for space {space_id}")
        return live

    def caught_up(self, collection: str, seq: int) -> bool:
        """Whether every open index of the collection holds all its changes up to `seq`."""
        for c, space in self.open_keys():
            if c == collection:
                live = self._live.get((c, space))
                wanted = min(seq, self._store.max_seq(c, space))
                if live is not None and live.applied_seq < wanted:
                    return False
        return True

    def open_keys(self) -> list[Key]:
        return list(self._live)

    # -- keeping current --------------------------------------------------------------------
    def sync(self, collection: str, space_id: str) -> int:
        """Apply every stored change not yet in the index. Returns the applied seq."""
        live = self._live.get((collection, space_id))
        if live is None:
            return 0
        with live.lock:
            self._catch_up(live)
            self._maybe_compact(live)
            self._observe(live)
            return live.applied_seq

    def _catch_up(self, live: LiveIndex) -> None:
        cfg = live.config
        while True:
            changes = self._store.changes_since(cfg.collection, cfg.space_id, live.applied_seq)
            if not changes:
                return
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

    def sync_collection(self, collection: str) -> None:
        for key in self.open_keys():
            if key[0] == collection:
                self.sync(*key)

    def sync_all(self) -> None:
        for key in self.open_keys():
            self.sync(*key)

    def _maybe_compact(self, live: LiveIndex) -> None:
        """Retrain an index grown past its training size, else compact one whose tombstone ratio
        passed the threshold; readers keep the reference they started with."""
        index = live.index
        if index.needs_retrain():
            started = time.perf_counter()
            live.index = index.retrained()
            log.info("retrained %s in %.2fs", live.config.collection, time.perf_counter() - started)
            return
        if index.tombstone_ratio() <= self._compaction_ratio:
            return
        started = time.perf_counter()
        live.index = index.compacted()
        log.info(
            "compacted %s in %.2fs (%d live vectors)",
            live.config.collection,
            time.perf_counter() - started,
            live.index.count(),
        )

    def _observe(self, live: LiveIndex) -> None:
        labels = (live.config.collection, live.config.space_id)
        self._metrics.vectors.labels(*labels).set(live.index.count())
        self._metrics.index_memory.labels(*labels).set(live.index.memory_bytes())
        ratio = live.index.tombstone_ratio()
        tomb = ratio * live.index.count() / max(1e-9, 1 - ratio)
        self._metrics.tombstones.labels(*labels).set(round(tomb))

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self, collection: str, space_id: str) -> bool:
        """Write a snapshot if the index moved since the last one. Returns whether it wrote."""
        live = self._live.get((collection, space_id))
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
        for key in self.open_keys():
            try:
                self.snapshot(*key)
            except OSError:
                log.exception("snapshot of %s failed; will retry", key)

    # -- reading ----------------------------------------------------------------------------
    def search(
        self,
        collection: str,
        space_id: str,
        queries: np.ndarray,
        k: int,
        allow: np.ndarray | None = None,
        knobs: dict[str, int] | None = None,
        flt: dict[str, Any] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """`knobs`: per-call search parameters (ef_search, nprobe, ...), checked for the type;
        `allow`: the ids that may be returned; `flt`: a metadata filter (storage/filters.py)
        the hits' documents satisfy, from memory for an index with positions
        (registry/filtering.py), else through the store's SQL."""
        live = self.get(collection, space_id)
        started = time.perf_counter()
        given = check_knobs(live.config.type, knobs) if knobs else {}
        index = live.index
        if flt and allow is None and positioned(index):
            filters = self._filters(live)
            known = filters.keys()
            mask = filters.mask(index, flt)
            if filters.keys() != known:
                self._note_keys(live.config, filters.keys())
            started = self._filtered(started)
            out = index.search_mask(queries, k, mask, **given)
        else:
            if flt:
                ids = self._store.filter_chunk_ids(collection, space_id, flt)
                allow = ids if allow is None else np.intersect1d(allow, ids)
                started = self._filtered(started)
            if given:
                out = index.search(queries, k, allow, **given)
            else:
                out = index.search(queries, k, allow)
        seconds = time.perf_counter() - started
        self._metrics.search_latency.labels(collection).observe(seconds)
        self.observe_stage("search", seconds)
        return out

    # -- filter columns (registry/filtering.py) ----------------------------------------------
    def _filters(self, live: LiveIndex) -> FilterColumns:
        filters = live.filters
        if filters is None:
            with self._guard:  # one FilterColumns per index, whoever asks first
                if live.filters is None:
                    cfg = live.config
                    live.filters = FilterColumns(self._store, cfg.collection, cfg.space_id)
                filters = live.filters
        return filters

    def _keys_file(self, collection: str, space_id: str) -> Path:
        """The metadata keys filters named on this space (beside the space's snapshot folder,
        which a rebuild replaces)."""
        return self._root / collection / f"{space_id}.filter-keys.json"

    def _note_keys(self, cfg: IndexConfig, keys: frozenset[str]) -> None:
        path = self._keys_file(cfg.collection, cfg.space_id)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(path, orjson.dumps(sorted(keys)))
        except OSError:  # only the next start's warm-up is lost
            log.exception("could not note the filter keys of %s", cfg.collection)

    def _warm_filters(self, live: LiveIndex) -> None:
        """Build, on a thread of its own, the filter columns of the keys filtered before, so
        that the first filtered query after a start does not wait for a scan of the store. At
        normal priority: a filtered query that comes meanwhile waits for it (a lowered priority
        would make that wait as long as the machine is busy)."""
        path = self._keys_file(live.config.collection, live.config.space_id)
        try:
            keys = {str(k) for k in orjson.loads(path.read_bytes())}
        except (OSError, ValueError, TypeError):  # none noted, or unreadable: built on demand
            return
        index = live.index
        if not keys or not positioned(index):
            return
        filters = self._filters(live)

        def warm() -> None:
            try:
                filters.warm(index, keys)
            except Exception:  # the first filtered query builds what is missing
                log.exception("warming the filter columns of %s failed", live.config.collection)

        threading.Thread(target=warm, name="filter-warm", daemon=True).start()

    def _filtered(self, started: float) -> float:
        """Observe the filter stage that began at `started`; returns now (the search's start)."""
        now = time.perf_counter()
        self.observe_stage("filter", now - started)
        return now

    def observe_stage(self, stage: str, seconds: float, route: str = "query") -> None:
        """One observation of embedstack_stage_seconds (search, hydrate: registry/search.py)."""
        self._metrics.stage_seconds.labels(stage, route).observe(seconds)
