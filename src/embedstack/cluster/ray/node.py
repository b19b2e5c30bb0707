"""A cluster node's actor: hosts the shard replicas placed on its node and feeds each from its
log partition in a background thread.

One actor per node, pinned by the node's custom resource `es_node_<name>`, restarted by Ray
(`max_restarts=-1`) when its process dies. Its assignments are kept on the node's disk, so a
restarted actor reopens every replica from its own snapshot and position without waiting for
the router.

Shard transfer: a replica new to this node (no files of its own) starts from a snapshot of a
live replica of its shard on another node (the router names them, most advanced first): a
consistent copy of that replica's store and the log position it is at, written here before the
replica opens, sent in pieces of `piece_bytes` with a checksum (cluster/ray/transfer.py); it
then reads the log from that position, so the log need not be kept from its start. With no
source that answers, it replays the log from offset 0 (if retention deleted the start, its
reader says LogTrimmed and the router resyncs it from a snapshot once a source answers)."""

from __future__ import annotations

import logging
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.log import LogTrimmed
from embedstack.cluster.logs import Reader, open_reader
from embedstack.cluster.ray.transfer import PIECE_BYTES, Outgoing, receive
from embedstack.cluster.replica import ShardReplica
from embedstack.fsutil import atomic_write
from embedstack.inference.backend import ModelRegistry
from embedstack.ingest.pipeline import EmbedFn
from embedstack.storage.lexical import LexicalStats

log = logging.getLogger(__name__)

NAMESPACE = "embedstack"
READ_BATCH = 256
TRANSFER_TIMEOUT_S = 60.0  # per call of a shard transfer: the source's copy, then each piece
TRANSFER_FILE = "transfer.json"  # where a transferred replica notes its source and position


def actor_name(node: str) -> str:
    return f"embedstack-node-{node}"


def node_resource(node: str) -> str:
    return f"es_node_{node}"


class _Feed:
    """A replica and the thread that applies its partition to it."""

    def __init__(
        self, replica: ShardReplica, reopen: Callable[[], Reader],
        transfer: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        self.replica = replica
        self.transfer = transfer  # the snapshot it started from, if it was transferred
        self._reopen = reopen
        self.reader = reopen()
        self.stop = threading.Event()
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        backoff = 0.1
        while not self.stop.is_set():
            try:
                # a back-fill step between two reads: writes keep flowing during an upgrade
                busy = self.replica.backfill_step()
                records = self.reader.read(READ_BATCH, 0.0 if busy else 0.2)
                if records:
                    position = self.replica.apply(records)
                    self.reader.commit(position)
                self.error = None
                backoff = 0.1
            except Exception as exc:  # the broker or the store failing: retry, keep serving
                log.exception("replica %s/%s", self.replica.coll.name, self.replica.shard)
                self.error = repr(exc)
                # re-read from the stored position: nothing after it was applied
                self.reader.close()
                self.reader = self._reopen()
                self.stop.wait(backoff)
                backoff = min(backoff * 2, 5.0)


def ray_peer(node: str) -> Callable[..., Any]:
    """`call(method, *args)` of node `node`'s actor, each call bounded by TRANSFER_TIMEOUT_S."""
    import ray

    handle = ray.get_actor(actor_name(node), namespace=NAMESPACE)

    def call(method: str, *args: Any) -> Any:
        return ray.get(getattr(handle, method).remote(*args), timeout=TRANSFER_TIMEOUT_S)

    return call


class ShardNode:
    def __init__(
        self,
        name: str,
        data_root: str,
        bootstrap: str,
        models_factory: Callable[[], ModelRegistry],
        embed_factory: Callable[[ModelRegistry], EmbedFn] | None = None,
        piece_bytes: int = PIECE_BYTES,
        peer: Callable[[str], Callable[..., Any]] | None = None,
    ) -> None:
        """`embed_factory`: given the node's models, how its replicas embed texts (the shared
        inference service, `cluster up --inference`); None: with the node's own models.
        `piece_bytes`: the size of each piece of a snapshot this node fetches. `peer`: given
        another node's name, a `call(method, *args)` of its actor (default: through Ray)."""
        self.name = name
        self._root = Path(data_root) / name
        self._root.mkdir(parents=True, exist_ok=True)
        self._bootstrap = bootstrap
        self._models = models_factory()
        self._embed = embed_factory(self._models) if embed_factory is not None else None
        self._feeds: dict[tuple[str, int], _Feed] = {}
        self._lock = threading.Lock()
        self._assigned_file = self._root / "assigned.json"
        self._outgoing = Outgoing(self._root / "outgoing")
        self._piece_bytes = piece_bytes
        self._peer = peer or ray_peer
        self.started = time.time()
        if self._assigned_file.exists():
            for item in orjson.loads(self._assigned_file.read_bytes()):
                self._open(ClusterCollection.from_json(item["collection"]), int(item["shard"]))

    def _dir(self, coll: ClusterCollection, shard: int) -> Path:
        return self._root / coll.topic / f"shard-{shard}"

    def _open(self, coll: ClusterCollection, shard: int) -> None:
        root = self._dir(coll, shard)
        replica = ShardReplica(root, coll, shard, self._models, self._embed)
        group = f"{coll.topic}.shard-{shard}.{self.name}"

        def reader() -> Reader:
            return open_reader(self._bootstrap, coll.topic, shard, replica.position, group)

        noted = root / TRANSFER_FILE
        transfer = orjson.loads(noted.read_bytes()) if noted.exists() else None
        self._feeds[(coll.name, shard)] = _Feed(replica, reader, transfer)

    def _transfer(self, coll: ClusterCollection, shard: int, sources: list[str]) -> None:
        """Start a replica new to this node from a snapshot of the first source that sends one
        (see the module doc); nothing when this node has files of the replica already."""
        root = self._dir(coll, shard)
        if (root / "store.db").exists():
            return
        for source in sources:
            if source == self.name:
                continue
            try:
                got = receive(self._peer(source), coll.name, shard, root, self._piece_bytes)
            except Exception:
                log.warning("no snapshot of %s/%s from %s", coll.name, shard, source, exc_info=True)
                continue
            note = {"source": source, **got, "at": time.time()}
            atomic_write(root / TRANSFER_FILE, orjson.dumps(note))
            log.info("replica %s/%s from %s: %s", coll.name, shard, source, note)
            return

    def snapshot_open(self, name: str, shard: int) -> dict[str, Any]:
        """Start sending a snapshot of this node's replica of `shard` to a new replica on another
        node (shard transfer): {"id", "size", "sha256", "position"}; then snapshot_piece."""
        return self._outgoing.open(self._replica(name, shard))

    def snapshot_piece(self, sid: str, offset: int, size: int) -> bytes:
        return self._outgoing.piece(sid, offset, size)

    def snapshot_close(self, sid: str) -> None:
        self._outgoing.close(sid)

    def _save(self) -> None:
        items = [
            {"collection": f.replica.coll.to_json(), "shard": f.replica.shard}
            for f in self._feeds.values()
        ]
        atomic_write(self._assigned_file, orjson.dumps(items))

    def assign(
        self, coll_json: dict[str, Any], shard: int, sources: list[str] | None = None
    ) -> bool:
        """Host a replica of `shard` (idempotent); True when it was new here. `sources`: nodes
        with a live replica of the shard, to start from a snapshot of (shard transfer)."""
        coll = ClusterCollection.from_json(coll_json)
        with self._lock:
            feed = self._feeds.get((coll.name, shard))
            if feed is not None and feed.replica.coll.topic == coll.topic:
                return False
            if feed is not None:  # an earlier collection of the same name
                self._close(coll.name, shard)
            self._transfer(coll, shard, sources or [])
            self._open(coll, shard)
            self._save()
            return True

    def resync(self, coll_json: dict[str, Any], shard: int, sources: list[str]) -> bool:
        """Start a replica whose log position was deleted (LogTrimmed: it was behind when every
        live replica's position let the log be trimmed) again from a snapshot of a live replica
        on `sources`: its files go, the snapshot's come (see _transfer). True when it was."""
        coll = ClusterCollection.from_json(coll_json)
        with self._lock:
            feed = self._feeds.get((coll.name, shard))
            if feed is None or LogTrimmed.__name__ not in (feed.error or ""):
                return False
            self._close(coll.name, shard)
            shutil.rmtree(self._dir(coll, shard), ignore_errors=True)
            self._transfer(coll, shard, sources)
            self._open(coll, shard)
            return True

    def _close(self, name: str, shard: int) -> None:
        feed = self._feeds.pop((name, shard))
        feed.stop.set()
        feed.thread.join(timeout=30)
        feed.reader.close()
        feed.replica.close()

    def drop(self, name: str, shard: int) -> bool:
        """Stop hosting a replica (its files stay until the collection is deleted)."""
        with self._lock:
            if (name, shard) not in self._feeds:
                return False
            self._close(name, shard)
            self._save()
            return True

    def search(
        self,
        name: str,
        shard: int,
        vec: np.ndarray,
        k: int,
        flt: dict[str, Any] | None,
        group: bool,
        space_id: str | None = None,
        knobs: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        return self._replica(name, shard).search(vec, k, flt, group, space_id, knobs)

    def lexical_stats(self, name: str, shard: int, text: str) -> LexicalStats:
        return self._replica(name, shard).lexical_stats(text)

    def candidates(
        self, name: str, shard: int, space_id: str | None, vec: np.ndarray | None,
        text: str | None, depth: int, flt: dict[str, Any] | None, mode: str,
        total: LexicalStats | None, knobs: dict[str, int] | None = None,
    ) -> dict[str, Any]:  # fmt: skip
        """A replica's share of a fused (hybrid, lexical, scored-group) query."""
        replica = self._replica(name, shard)
        return replica.candidates(space_id, vec, text, depth, flt, mode, total, knobs)

    def _replica(self, name: str, shard: int) -> ShardReplica:
        feed = self._feeds.get((name, shard))
        if feed is None:
            from embedstack.errors import Unavailable

            raise Unavailable(f"node {self.name} holds no replica of {name} shard {shard}")
        return feed.replica

    def get_document(self, name: str, shard: int, document_id: str) -> dict[str, Any] | None:
        return self._replica(name, shard).get_document(document_id)

    def sample_texts(self, name: str, shard: int, space_id: str, n: int) -> list[str]:
        """Stored texts of a replica, unlabeled queries for an upgrade's gate."""
        return self._replica(name, shard).sample_texts(space_id, n)

    def status(self) -> dict[str, Any]:
        """{"node", "started", "replicas": [{collection, topic, shard, position, documents,
        error, stats, spaces, upgrade}]}: what the router reconciles against (and sums for
        collection stats and upgrade progress)."""
        return {
            "node": self.name,
            "started": self.started,
            "replicas": [
                _replica_status(name, shard, f) for (name, shard), f in list(self._feeds.items())
            ],
        }


def _replica_status(name: str, shard: int, feed: _Feed) -> dict[str, Any]:
    stats = feed.replica.stats()
    return {
        "collection": name,
        "topic": feed.replica.coll.topic,
        "shard": shard,
        "position": feed.replica.position,
        "documents": stats["documents"],
        "error": feed.error,
        "stats": stats,
        "transfer": feed.transfer,
        **feed.replica.spaces(),
    }
