"""One replica of one virtual shard: the single-node engine (Store, IndexManager, the ingest
indexer) without HTTP, fed by its log partition.

Recovery is the single-node invariant: the store is committed before the position is written,
so after a crash the replica reopens its store and index (snapshot + replay of the store's
change log) and re-reads the log from its position; re-applying a record is idempotent
(unchanged documents are skipped by content hash). The same invariant moves a shard: a new
replica opens a copy of a live replica's store at that replica's position (`snapshot`) and reads
the log from there (cluster/ray/node.py).

Model upgrades reuse the single-node spaces of the replica's store: a `space` record of the log
registers a shadow space (start_shadow), which every later write then fills too, and the feed
thread back-fills the documents stored before it a batch at a time between log reads
(`backfill_step`), so writes keep flowing during an upgrade. `cutover`, `rollback` and `retire`
records mirror the catalog's flips in the store; queries name the space they search (the one
the catalog serves), so the store's own serving mark never decides what a query reads."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from embedstack.cluster.catalog import ClusterCollection, SpaceRef
from embedstack.cluster.log import LogRecord
from embedstack.errors import NotFound, Unavailable
from embedstack.fsutil import atomic_write
from embedstack.inference.backend import ModelRegistry
from embedstack.ingest.pipeline import DocumentIndexer, EmbedFn, WorkerConfig
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.hybrid import StoreCandidates
from embedstack.registry.indexes import IndexManager
from embedstack.registry.search import search_space
from embedstack.registry.upgrade import sample_texts
from embedstack.storage.backup import sqlite_copy
from embedstack.storage.lexical import LexicalStats
from embedstack.storage.store import DocumentRow, Store
from embedstack.types import CollectionConfig

log = logging.getLogger(__name__)

BACKFILL_BATCH = 128  # documents re-embedded per step, between two reads of the log


class ShardReplica:
    def __init__(
        self, root: Path, coll: ClusterCollection, shard: int, models: ModelRegistry,
        embed: EmbedFn | None = None,
    ) -> None:  # fmt: skip
        """`embed`: how texts are embedded (the shared inference service's bulk lane, when the
        node was started with one); default: the node's own model, in a thread."""
        self.coll = coll
        self.shard = shard
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._models = models
        metrics = Metrics()
        self._store = Store(root / "store.db")
        self._indexes = IndexManager(self._store, root / "indexes", metrics)
        self._collections = CollectionService(
            self._store, models, self._indexes, coll.config.model or ""
        )
        try:
            record = self._store.get_collection(coll.name)
        except NotFound:
            self._create(coll)
            record = self._store.get_collection(coll.name)
        self._collections.open(record)
        self.coll = _with_settings(coll, record.config)  # a PATCH applied before a restart
        self.rebuild_error: str | None = None  # the last settings change's rebuild failure
        up = self._store.latest_upgrade(coll.name)
        self._backfilling = up is not None and up.state == "backfilling"  # skip the poll if not
        self._indexer = DocumentIndexer(
            self._store, models, embed or self._embed, metrics, WorkerConfig(embed_batch=64)
        )
        self._stats: dict[str, Any] | None = None  # stats(), until the next change
        self._changes = 0  # bumped before and after every change: a count taken across one
        # is not kept
        self._position_file = root / "position.json"
        self.position = 0
        if self._position_file.exists():
            self.position = int(orjson.loads(self._position_file.read_bytes())["position"])

    def _create(self, coll: ClusterCollection) -> None:
        """A new replica gets every space the catalog has now (the serving one, and a previous
        and a shadow one): replaying the log from the start then writes each document to all of
        them, so it needs no back-fill; later space records of the log find them in place."""
        first = coll.previous or SpaceRef(coll.space_id, coll.model)
        self._store.create_collection(coll.name, self._config(first.model), first.space_id)
        if coll.previous is not None:
            self._shadow(coll.space_id, coll.model, 0, "cut_over")
            self._store.cut_over(coll.name, coll.space_id)
        if coll.shadow is not None:
            self._shadow(coll.shadow.space_id, coll.shadow.model, 0, "ready")

    def _config(self, model: str | None) -> Any:
        """The collection's config with `model` as its model (as the store records a space)."""
        if model is None or model == self.coll.config.model:
            return self.coll.config
        return replace(self.coll.config, model=model, model_spec=self._models.get(model).spec)

    def _shadow(self, space_id: str, model: str | None, total: int, state: str) -> None:
        if model is None:
            raise ValueError("a shadow space needs a model")
        spec = self._models.get(model).spec
        up = self._store.start_shadow(self.coll.name, space_id, model, spec, total, {"after": ""})
        if state != "backfilling":
            self._store.update_upgrade(up.id, state=state)

    async def _embed(self, model: str, texts: Sequence[str]) -> np.ndarray:
        embedder = self._models.get(model)
        return await asyncio.to_thread(embedder.embed_batch, list(texts))

    def apply(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Apply (offset, value) records in log order; the position is stored after the store
        commit. Returns the new position (the next offset to read)."""
        if not records:
            return self.position
        self._changed()
        run: dict[str, DocumentRow] = {}
        for _, raw in records:
            rec = LogRecord.decode(raw)
            if rec.op == "put":
                for d in rec.documents:
                    run.pop(d.id, None)
                    run[d.id] = d  # a later version in the same run wins, as in log order
                continue
            self._put(list(run.values()))
            run = {}
            if rec.op == "space":
                assert rec.space is not None
                self._space(rec.space)
                continue
            if rec.op == "config":
                assert rec.config is not None
                self._configure(rec.config)
                continue
            with contextlib.suppress(NotFound):
                self._store.delete_document(self.coll.name, rec.document_id)
        self._put(list(run.values()))
        self._indexes.sync_collection(self.coll.name)
        self.position = records[-1][0] + 1
        atomic_write(self._position_file, orjson.dumps({"position": self.position}))
        self._changed()
        return self.position

    def _changed(self) -> None:
        self._changes += 1
        self._stats = None

    def _put(self, rows: list[DocumentRow]) -> None:
        if not rows:
            return
        changed = self._store.put_documents(self.coll.name, rows)
        if changed:
            payload = {"collection": self.coll.name, "documents": changed}
            totals = asyncio.run(self._indexer.process(payload))
            if totals.errors:
                raise RuntimeError("; ".join(totals.errors))

    def _configure(self, change: dict[str, Any]) -> None:
        """Apply a `config` record (PATCH of the collection): new query defaults and index
        settings stored; when the index settings changed, every space's index is rebuilt aside
        and swapped (the single-node rebuild), here in the feed, so the record's position is
        written only once the new indexes serve. A rebuild that fails keeps the old indexes
        serving and is reported (`rebuild_error` in stats), as on single node; idempotent."""
        name = self.coll.name
        record = self._store.get_collection(name)
        stored = {**record.config.to_json(), "index": change["index"], "search": change["search"]}
        config = CollectionConfig.from_json(stored)
        self.coll = _with_settings(self.coll, config)
        if config == record.config:
            return
        self._store.update_collection_config(name, config)
        if config.index == record.config.index:
            return
        try:
            self._collections.rebuild(self._store.get_collection(name))
            self.rebuild_error = None
        except Exception as exc:
            log.exception("index rebuild of %s/%s failed; the old index serves", name, self.shard)
            self.rebuild_error = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"

    # -- spaces (model upgrades) -----------------------------------------------------------
    def _space(self, change: dict[str, Any]) -> None:
        """Apply a space record; each is idempotent against the store's spaces, so a replica
        that starts with the catalog's spaces (see _create) or replays a record skips it."""
        name, action, space_id = self.coll.name, change["action"], str(change["space_id"])
        local = {s.space_id: s for s in self._store.spaces(name)}
        up = self._store.latest_upgrade(name)
        if action == "shadow":
            if space_id in local:
                return
            if up is not None and up.state in ("backfilling", "ready"):
                self._store.update_upgrade(up.id, state="cancelled")  # the catalog moved on
            total = self._store.collection_stats(name)["documents"]
            self._shadow(space_id, change.get("model"), total, "backfilling")
            self._backfilling = True
            self._collections.open(self._store.get_collection(name))
        elif action in ("cutover", "rollback"):
            if space_id not in local or local[space_id].state == "serving":
                return
            before = set(local)
            self._store.cut_over(name, space_id)
            for gone in before - {s.space_id for s in self._store.spaces(name)}:
                self._indexes.drop(name, gone)  # an older previous space, retired by the flip
            if up is not None and up.to_space == space_id and action == "cutover":
                self._store.update_upgrade(up.id, state="cut_over")
        elif action == "retire":
            if space_id not in local or local[space_id].state == "serving":
                return
            self._store.retire(name, space_id)
            self._indexes.drop(name, space_id)
            if up is not None and up.to_space == space_id and up.state != "cut_over":
                self._store.update_upgrade(up.id, state="cancelled")

    def backfill_step(self, batch: int = BACKFILL_BATCH) -> bool:
        """Re-embed the next `batch` stored documents into the shadow space (in id order, the
        last id done kept on the upgrade record, so a restart resumes there); marks the
        upgrade ready after the last one. True while there is more to do."""
        if not self._backfilling:
            return False
        name = self.coll.name
        up = self._store.latest_upgrade(name)
        if up is None or up.state != "backfilling":
            self._backfilling = False
            return False
        self._changed()
        after = str(up.options.get("after", ""))
        ids = next(self._store.all_documents(name, batch, after), [])
        if not ids:
            self._indexes.sync(name, up.to_space)
            self._store.update_upgrade(up.id, state="ready", done=up.total)
            self._backfilling = False
            self._changed()
            return False
        payload = {"collection": name, "documents": ids, "space": up.to_space}
        totals = asyncio.run(self._indexer.process(payload))
        if totals.errors:
            raise RuntimeError("; ".join(totals.errors))
        self._indexes.sync(name, up.to_space)
        done = min(up.total, up.done + len(ids))
        self._store.update_upgrade(up.id, done=done, options={**up.options, "after": ids[-1]})
        self._changed()
        return True

    def spaces(self) -> dict[str, Any]:
        """{"spaces": {space_id: state}, "upgrade": the store's latest upgrade or None}."""
        up = self._store.latest_upgrade(self.coll.name)
        return {
            "spaces": {s.space_id: s.state for s in self._store.spaces(self.coll.name)},
            "upgrade": None
            if up is None
            else {"to_space": up.to_space, "state": up.state, "done": up.done, "total": up.total},
        }

    # -- reads ------------------------------------------------------------------------------
    def search(
        self,
        vec: np.ndarray,
        k: int,
        flt: dict[str, Any] | None,
        group: bool,
        space_id: str | None = None,
        knobs: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Search `space_id` (the router names the space the catalog serves; default: the one
        this replica was created with); `knobs`: the query's index parameters, checked by this
        replica's index (InvalidInput, a 422 at the API node, if it has no such knob)."""
        space = self._searched_space(space_id)
        return search_space(
            self._store, self._indexes, self.coll.name, space, vec, k, flt, group, knobs
        )

    def _searched_space(self, space_id: str | None) -> str:
        """The space a query names (default: this replica's first); Unavailable when this
        replica does not have it (yet): the router then tries another replica."""
        space = space_id or self.coll.space_id
        try:
            self._indexes.get(self.coll.name, space)
        except NotFound:
            raise Unavailable(
                f"replica {self.coll.name}/{self.shard} has no space {space} yet"
            ) from None
        return space

    def lexical_stats(self, text: str) -> LexicalStats:
        """What bm25 reads from this replica's store for `text`; the router sums every shard's
        so that each scores with the collection's statistics (storage/lexical.py)."""
        return self._store.lexical_stats(text)

    def candidates(
        self, space_id: str | None, vec: np.ndarray | None, text: str | None, depth: int,
        flt: dict[str, Any] | None, mode: str, total: LexicalStats | None,
        knobs: dict[str, int] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """This shard's share of a fused query (registry/hybrid.py fused_search, run by the
        router over every shard): its top `depth` dense and lexical candidates, lexical ones
        scored with the collection's `total` statistics, and the rows of all of them (so the
        router never asks another replica, with other chunk ids, to hydrate them)."""
        space = self._searched_space(space_id)
        name = self.coll.name
        source = StoreCandidates(self._store, self._indexes, name, space, vec, text, flt, mode,
                                 knobs=knobs, lexical_total=total)  # fmt: skip
        dense, lexical = source.lists(depth, 1)
        rows = source.hydrate(list(dict.fromkeys([*dense[0], *lexical[0]])))
        return {"dense": dense, "lexical": lexical, "rows": rows}

    def get_document(self, document_id: str) -> dict[str, Any] | None:
        """A stored document as last written (DocumentOut's fields), or None."""
        rows = self._store.get_documents(self.coll.name, [document_id])
        if not rows:
            return None
        row = rows[0]
        return {"id": row.id, "text": row.text, "metadata": row.metadata,
                "indexed": row.indexed_hash == row.content_hash}  # fmt: skip

    def sample_texts(self, space_id: str, n: int) -> list[str]:
        return sample_texts(self._store, self.coll.name, space_id, n)

    def stats(self) -> dict[str, Any]:
        """collection_stats of this replica (chunks: of its store's serving space), and
        vectors and chunks per space; counted again only after a change (status rounds ask
        every 0.5 s, and the counts scan the store)."""
        cached, changes = self._stats, self._changes
        if cached is not None:
            return cached
        out: dict[str, Any] = dict(self._store.collection_stats(self.coll.name))
        vectors, indexes, index_bytes = {}, {}, {}
        for key in self._indexes.open_keys():
            if key[0] == self.coll.name:
                live = self._indexes.get(*key)
                vectors[key[1]] = live.index.count()
                index_bytes[key[1]] = live.index.memory_bytes()
                indexes[key[1]] = live.config.type
        out["vectors"] = vectors
        out["index_bytes"] = index_bytes
        out["indexes"] = indexes  # the index type serving each space (a PATCH rebuilds them)
        out["rebuild_error"] = self.rebuild_error
        out["chunks_by_space"] = self._store.chunks_by_space(self.coll.name)
        if changes == self._changes:  # nothing changed while counting: keep it
            self._stats = out
        return out

    def documents(self) -> int:
        return int(self.stats()["documents"])

    def snapshot(self, target: Path) -> int:
        """A consistent copy of this replica's store written to `target` (SQLite's online backup,
        while the feed keeps applying), and a log position it is at least at: a replica opened
        on the copy that reads the log from there converges (re-applying a record is
        idempotent). The position is read before the copy, so the copy never lags it; the
        index is not copied (a replica rebuilds it from the store it opens)."""
        position = self.position
        sqlite_copy(self._store.path, target)
        return position

    def close(self) -> None:
        self._indexes.snapshot_all()
        self._store.close()


def _with_settings(coll: ClusterCollection, config: CollectionConfig) -> ClusterCollection:
    """`coll` with the index and query settings of `config` (a store's config may name another
    model than the catalog's: only the settings a PATCH changes are taken)."""
    settings = replace(coll.config, index=config.index, search=config.search)
    return replace(coll, config=settings)
