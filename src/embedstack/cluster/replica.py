"""One replica of one virtual shard: the single-node engine (Store, IndexManager, the ingest
indexer) without HTTP, fed by its log partition.

Recovery is the single-node invariant: the store is committed before the position is written,
so after a crash the replica reopens its store and index (snapshot + replay of the store's
change log) and re-reads the log from its position; re-applying a record is idempotent
(unchanged documents are skipped by content hash)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.log import LogRecord
from embedstack.errors import NotFound
from embedstack.fsutil import atomic_write
from embedstack.inference.backend import ModelRegistry
from embedstack.ingest.pipeline import DocumentIndexer, WorkerConfig
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionService
from embedstack.registry.indexes import IndexManager
from embedstack.registry.search import search_space
from embedstack.storage.store import DocumentRow, Store


class ShardReplica:
    def __init__(
        self, root: Path, coll: ClusterCollection, shard: int, models: ModelRegistry
    ) -> None:
        self.coll = coll
        self.shard = shard
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._models = models
        metrics = Metrics()
        self._store = Store(root / "store.db")
        self._indexes = IndexManager(self._store, root / "indexes", metrics)
        collections = CollectionService(self._store, models, self._indexes, coll.config.model or "")
        try:
            record = self._store.get_collection(coll.name)
        except NotFound:
            self._store.create_collection(coll.name, coll.config, coll.space_id)
            record = self._store.get_collection(coll.name)
        collections.open(record)
        self._indexer = DocumentIndexer(
            self._store, models, self._embed, metrics, WorkerConfig(embed_batch=64)
        )
        self._position_file = root / "position.json"
        self.position = 0
        if self._position_file.exists():
            self.position = int(orjson.loads(self._position_file.read_bytes())["position"])

    async def _embed(self, model: str, texts: Sequence[str]) -> np.ndarray:
        embedder = self._models.get(model)
        return await asyncio.to_thread(embedder.embed_batch, list(texts))

    def apply(self, records: Sequence[tuple[int, bytes]]) -> int:
        """Apply (offset, value) records in log order; the position is stored after the store
        commit. Returns the new position (the next offset to read)."""
        if not records:
            return self.position
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
            with contextlib.suppress(NotFound):
                self._store.delete_document(self.coll.name, rec.document_id)
        self._put(list(run.values()))
        self._indexes.sync_collection(self.coll.name)
        self.position = records[-1][0] + 1
        atomic_write(self._position_file, orjson.dumps({"position": self.position}))
        return self.position

    def _put(self, rows: list[DocumentRow]) -> None:
        if not rows:
            return
        changed = self._store.put_documents(self.coll.name, rows)
        if changed:
            payload = {"collection": self.coll.name, "documents": changed}
            totals = asyncio.run(self._indexer.process(payload))
            if totals.errors:
                raise RuntimeError("; ".join(totals.errors))

    def search(
        self, vec: np.ndarray, k: int, flt: dict[str, Any] | None, group: bool
    ) -> list[dict[str, Any]]:
        return search_space(
            self._store, self._indexes, self.coll.name, self.coll.space_id, vec, k, flt, group
        )

    def documents(self) -> int:
        return int(self._store.collection_stats(self.coll.name)["documents"])

    def close(self) -> None:
        self._indexes.snapshot_all()
        self._store.close()
