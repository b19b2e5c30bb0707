"""The cluster router: what an API node does in cluster mode.

Writes: check documents, hash each to its virtual shard, append them to the shard partitions of
the collection's log topic (acks=all) and only then return the job id (202). Reads: embed the
query once, scatter to one live replica per shard (caught-up and least loaded first), retry on
another replica when one fails or does not answer within `replica_timeout`, merge top-k.

A background loop reconciles placement with the live nodes (rendezvous hashing over the nodes
that answered the last status round): it assigns missing replicas (they catch up from the
log) and drops surplus ones once every placed replica has caught up. It also keeps the log
short: once every replica of a shard is past an offset (each replica's position is written
after its store commit, so its store is a snapshot covering it), the records before it are
deleted (`retention_points`, when the log `trims`); a replica that comes back behind that (its
node was down meanwhile) is started again from a snapshot of a live one (ShardNode.resync).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from embedstack.cluster.catalog import ClusterCollection, RedisCatalog
from embedstack.cluster.fused import ShardCandidates, total_stats
from embedstack.cluster.log import LogRecord, LogTrimmed
from embedstack.cluster.logs import Log
from embedstack.cluster.ray.nodes import RayNodes
from embedstack.cluster.shards import Placement, check_layout, place, shard_of
from embedstack.errors import EmbedStackError, InvalidInput, NotFound, SpaceMismatch, Unavailable
from embedstack.inference.backend import ModelRegistry
from embedstack.inference.parity import check_parity
from embedstack.ingest.records import Rejected
from embedstack.ingest.submit import rejection_entry
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionConfigs
from embedstack.registry.hybrid import Retrieval, check_inputs, fused_search
from embedstack.storage.catalog import SpaceInfo, UpgradeRecord
from embedstack.storage.store import CollectionRecord, DocumentRow
from embedstack.types import CollectionConfig

log = logging.getLogger(__name__)

RECORD_DOCUMENTS = 64  # documents per log record
ASSIGN_TIMEOUT_S = 120.0  # opening a replica loads its store and index


@dataclass(frozen=True)
class ReplicaState:
    node: str
    shard: int
    topic: str
    position: int
    error: str | None
    stats: dict[str, Any] = field(default_factory=dict)  # documents, chunks, vectors per space
    upgrade: dict[str, Any] | None = None  # the replica's latest upgrade: to_space, state, done


@dataclass
class View:
    """What the last status round saw: live nodes and the replicas they host. `placed`: the
    nodes shards are placed on, the live ones plus those that answered within the router's
    grace period (a node slow to answer one round keeps its shards, so a loaded box does not
    move replicas back and forth; queries only go to `live` ones)."""

    live: list[str]
    replicas: dict[tuple[str, int], list[ReplicaState]]  # (topic, shard) -> replicas
    at: float
    handles: dict[str, Any] = field(default_factory=dict)  # node -> actor handle
    placed: list[str] = field(default_factory=list)


class ClusterRouter:
    def __init__(
        self,
        catalog: RedisCatalog,
        log: Log,
        nodes: RayNodes,
        models: ModelRegistry,
        default_model: str,
        replica_timeout: float = 1.0,
        status_timeout: float = 1.0,
        metrics: Metrics | None = None,
        node_grace_s: float = 5.0,
    ) -> None:
        self.catalog = catalog
        # shard calls, retries and timeouts (the API node's /metrics exports the registry)
        self.metrics = metrics if metrics is not None else Metrics()
        self.log = log
        self._nodes = nodes
        self._models = models
        self._configs = CollectionConfigs(models, default_model)
        self.replica_timeout = replica_timeout
        self._status_timeout = status_timeout
        self.node_grace_s = node_grace_s
        self._seen: dict[str, tuple[float, list[ReplicaState]]] = {}  # node -> last answer
        self._view = View([], {}, 0.0)
        self._inflight: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._loop: threading.Thread | None = None
        self.moves = 0  # replicas assigned to a node after the collection was first placed
        self.trimmed: dict[tuple[str, int], int] = {}  # (topic, shard) -> records deleted before
        self.on_round: list[Callable[[], None]] = []  # also run by the reconcile loop

    @property
    def models(self) -> ModelRegistry:
        return self._models

    # -- collections ---------------------------------------------------------------------------
    def create_collection(
        self, name: str, shards: int = 8, replicas: int = 2, **settings: Any
    ) -> ClusterCollection:
        check_layout(shards, replicas)
        config, space_id = self._configs.config_for(name, **settings)
        safe = "".join(ch if ch.isalnum() or ch in "._-" else "_" for ch in name)
        topic = f"embedstack.{safe}.{uuid.uuid4().hex[:8]}"
        self.log.create_topic(topic, shards)
        coll = ClusterCollection(
            name, config, space_id, time.time(), topic, shards, replicas, config.model
        )
        self.catalog.create(coll)
        self.reconcile()
        return coll

    def delete_collection(self, name: str) -> None:
        coll = self.catalog.get(name)
        self.catalog.delete(name)
        for node, handle in self._nodes.handles().items():
            for shard in range(coll.shards):
                with contextlib.suppress(Exception):
                    _get(handle.drop.remote(name, shard), self._status_timeout * 5)
                    log.debug("dropped %s/%s on %s", name, shard, node)
        with contextlib.suppress(Unavailable):
            self.log.delete_topic(coll.topic)

    # -- writes --------------------------------------------------------------------------------
    def put_documents(
        self, name: str, rows: Sequence[DocumentRow], rejected: Sequence[Rejected] = ()
    ) -> str:
        """Append to the log; returns the job id once the broker acknowledged every record.
        `rejected`: inputs of the same submission that became no document, kept with the job
        (a submission of rejections only still gets its job, done at once)."""
        coll = self.catalog.resolve(name)
        by_shard: dict[int, list[DocumentRow]] = {}
        for row in rows:
            by_shard.setdefault(shard_of(row.id, coll.shards), []).append(row)
        records = [
            (shard, docs[i].id, LogRecord("put", tuple(docs[i : i + RECORD_DOCUMENTS])).encode())
            for shard, docs in by_shard.items()
            for i in range(0, len(docs), RECORD_DOCUMENTS)
        ]
        offsets = self.log.append(coll.topic, records) if records else {}
        job_id = uuid.uuid4().hex
        entries = [rejection_entry(r) for r in rejected]
        self.catalog.put_job(job_id, coll.name, coll.topic, offsets, len(rows), entries)
        return job_id

    def change_settings(
        self, name: str, change: Callable[[CollectionConfig], CollectionConfig]
    ) -> ClusterCollection:
        """New index and query settings (PATCH of a collection): `change` (which raises to
        refuse) makes the new config from the catalog's; the catalog takes it and a `config`
        record goes to every shard partition in one step, so every replica applies it in log
        order (rebuilding its indexes when the index settings changed). The record is appended
        inside the catalog transaction, before its commit: of two concurrent changes the one
        the catalog keeps is also the last in every partition. `settings_pending` says when
        every replica has applied an index change."""
        offsets: dict[int, int] = {}
        rebuilds = [False]

        def apply(
            coll: ClusterCollection, up: UpgradeRecord | None
        ) -> tuple[ClusterCollection, UpgradeRecord | None]:
            config = change(coll.config)
            body = {"index": config.to_json()["index"], "search": dict(config.search)}
            record = LogRecord("config", config=body).encode()
            offsets.clear()
            appended = self.log.append(coll.topic, [(s, "", record) for s in range(coll.shards)])
            offsets.update(appended)
            rebuilds[0] = config.index != coll.config.index
            return replace(coll, config=config), up

        coll, _ = self.catalog.update(name, apply)
        if rebuilds[0]:  # query defaults alone rebuild nothing: they apply at once
            self.catalog.put_job(_settings_job(coll), coll.name, coll.topic, offsets, 0)
        return coll

    def settings_pending(self, coll: ClusterCollection) -> bool:
        """Whether the latest index change of the collection is not yet applied by every placed
        live replica of every shard (GET collection's `rebuilding`: its indexes are being
        rebuilt)."""
        try:
            return bool(self.job(_settings_job(coll))["status"] != "done")
        except NotFound:
            return False

    def delete_document(self, name: str, document_id: str) -> str:
        return self.delete_documents(name, [document_id])

    def delete_documents(self, name: str, document_ids: Sequence[str]) -> str:
        """Append a delete per document to the log; one job id for them all."""
        coll = self.catalog.resolve(name)
        records = [
            (shard_of(d, coll.shards), d, LogRecord("delete", document_id=d).encode())
            for d in document_ids
        ]
        offsets = self.log.append(coll.topic, records)
        job_id = uuid.uuid4().hex
        self.catalog.put_job(job_id, coll.name, coll.topic, offsets, len(records))
        return job_id

    def append_space(self, coll: ClusterCollection, change: dict[str, Any]) -> dict[int, int]:
        """Append a space record (an upgrade's shadow, cutover, rollback, retire) to every shard
        partition; returns the offset it got in each."""
        record = LogRecord("space", space=change).encode()
        return self.log.append(coll.topic, [(s, "", record) for s in range(coll.shards)])

    def get_document(self, coll: ClusterCollection, document_id: str) -> dict[str, Any] | None:
        """A document from a replica of its shard (caught-up first; the next on failure)."""
        shard = shard_of(document_id, coll.shards)
        for node in self._candidates(coll, shard):
            handle = self._view.handles.get(node)
            if handle is None:
                continue
            try:
                found: dict[str, Any] | None = _get(
                    handle.get_document.remote(coll.name, shard, document_id),
                    self.replica_timeout,
                )
                return found
            except Exception:
                continue
        raise Unavailable(
            f"no replica of shard {shard} of {coll.name!r} answered within "
            f"{self.replica_timeout:g} s: retry shortly"
        )

    def wait_job(self, job_id: str, timeout: float) -> bool:
        """True once the job is done (every placed live replica applied it), False after
        `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while self.job(job_id)["status"] != "done":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def sample_texts(self, coll: ClusterCollection, space_id: str, n: int) -> list[str]:
        """About `n` stored texts, an even share from one live replica of each shard."""
        share = -(-n // coll.shards)
        texts: list[str] = []
        for shard in range(coll.shards):
            for node in self._candidates(coll, shard):
                handle = self._view.handles.get(node)
                if handle is None:
                    continue
                try:
                    texts += _get(
                        handle.sample_texts.remote(coll.name, shard, space_id, share),
                        self._status_timeout * 5,
                    )
                    break
                except Exception:
                    continue
        return texts[:n]

    def replica_states(self, coll: ClusterCollection) -> dict[int, list[ReplicaState]]:
        """Each shard's placed live replicas, as the last status round saw them."""
        view = self._view
        placement = self.placement(coll, view)
        out: dict[int, list[ReplicaState]] = {}
        for shard in range(coll.shards):
            states = {r.node: r for r in view.replicas.get((coll.topic, shard), [])}
            out[shard] = [states[n] for n in placement.get(shard, ()) if n in states]
        return out

    def job(self, job_id: str) -> dict[str, Any]:
        """`done` once every placed live replica of each shard the job wrote has applied it
        (so a read on any replica sees it), else `running`; with per-shard detail."""
        job = self.catalog.get_job(job_id)
        coll = self.catalog.get(job["collection"])
        view = self._view
        placement = self.placement(coll, view)
        shards = {}
        for shard, offset in job["offsets"].items():
            states = {r.node: r for r in view.replicas.get((coll.topic, shard), [])}
            wanted = placement.get(shard, ())
            applied = [n for n in wanted if n in states and states[n].position > offset]
            shards[shard] = {"replicas": list(wanted), "applied": applied}
        done = all(
            s["replicas"] and len(s["applied"]) == len(s["replicas"]) for s in shards.values()
        )  # a job of rejections only wrote nothing: done
        return {
            "id": job_id,
            "status": "done" if done else "running",
            "collection": coll.name,
            "documents": job["documents"],
            "created_at": job["created_at"],
            "shards": shards,
            "rejected": job.get("rejected", []),
        }

    # -- reads ---------------------------------------------------------------------------------
    def single_node_view(
        self, coll: ClusterCollection, space_id: str | None = None
    ) -> tuple[CollectionRecord, SpaceInfo]:
        """The single-node view of a cluster collection and one of its spaces (default: the
        serving one), for the input checks shared with single node."""
        record = CollectionRecord(coll.name, coll.config, coll.space_id, coll.created_at)
        space, model = self.space_of(coll, space_id)
        spec = self._models.get(model).spec if model else None
        return record, SpaceInfo(coll.name, space, model, spec, "serving", 0.0)

    def space_of(self, coll: ClusterCollection, space_id: str | None) -> tuple[str, str | None]:
        """(space id, model) of the serving space, or of the named shadow or previous space
        (as single node lets a query name one); SpaceMismatch for any other."""
        spaces = {coll.space_id: coll.model}
        for ref in (coll.shadow, coll.previous):
            if ref is not None:
                spaces[ref.space_id] = ref.model
        wanted = space_id or coll.space_id
        if wanted not in spaces:
            raise SpaceMismatch(
                f"space {wanted} is not a space of collection {coll.name!r}, whose spaces are "
                f"{', '.join(spaces)}: vectors from different models or settings cannot be mixed"
            )
        return wanted, spaces[wanted]

    def query_model(self, coll: ClusterCollection, space_id: str | None = None) -> tuple[str, str]:
        """(space id, model) a text query of the serving (or named) space is embedded with,
        the model's space checked against it (parity); InvalidInput without a model."""
        space, model = self.space_of(coll, space_id)
        if not model:
            raise InvalidInput(
                f"collection {coll.name!r} has no model (bring-your-own vectors): "
                "send 'vector' instead of 'text'"
            )
        check_parity(self._models.get(model).spec, coll.name, space)
        return space, model

    def embed_query(
        self, coll: ClusterCollection, text: str, space_id: str | None = None
    ) -> np.ndarray:
        """The query in the serving (or named) space: embedded here with that space's model,
        parity checked."""
        space, model = self.query_model(coll, space_id)
        return self.embed(coll.name, space, model, [text])[0]

    def embed(self, name: str, space_id: str, model: str, texts: list[str]) -> np.ndarray:
        """Texts embedded for space `space_id` of collection `name`; Conflict when the model's
        space is not that one (a model changed under the space: its vectors would not mix)."""
        embedder = self._models.get(model)
        check_parity(embedder.spec, name, space_id)
        return np.asarray(embedder.embed_batch(texts), np.float32)

    def query(
        self,
        name: str,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int = 10,
        flt: dict[str, Any] | None = None,
        group: bool = False,
        knobs: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        coll = self.catalog.resolve(name)
        if vector is None and text is None:
            raise InvalidInput("a query needs 'text' or 'vector'")
        vec = vector if vector is not None else self.embed_query(coll, str(text))
        return self.search(coll, coll.space_id, vec, k, flt, group, knobs)

    def search(
        self,
        coll: ClusterCollection,
        space_id: str,
        vec: np.ndarray,
        k: int,
        flt: dict[str, Any] | None = None,
        group: bool = False,
        knobs: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Top-k of space `space_id` over every shard (the query names the space, so a query
        in flight during a cutover reads one space throughout); `knobs`: per-query index
        parameters (a plain dict, checked again by each replica's index)."""
        parts = self._scatter(coll, "search", vec, k, flt, group, space_id, knobs)
        hits = [h for part in parts for h in part]
        hits.sort(key=lambda h: h["score"], reverse=coll.config.metric != "l2")
        return hits[:k]

    def fused_search(
        self,
        coll: ClusterCollection,
        space_id: str,
        vec: np.ndarray | None,
        text: str | None,
        k: int,
        flt: dict[str, Any] | None,
        group: bool,
        how: Retrieval,
        knobs: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        """A hybrid or lexical query (or dense with a document scoring), fused by the
        single-node code over every shard's candidates (cluster/fused.py); `knobs` as search's."""
        check_inputs(how, vec, text)

        def scatter(method: str, *args: Any) -> list[Any]:
            return self._scatter(coll, method, *args)

        total = total_stats(scatter, str(text)) if how.mode != "dense" else None
        source = ShardCandidates(scatter, space_id, vec, text, flt, how.mode, total, knobs)
        return fused_search(source, k, group, how, coll.config.metric == "l2")

    def _candidates(self, coll: ClusterCollection, shard: int) -> list[str]:
        states = [
            r for r in self._view.replicas.get((coll.topic, shard), []) if r.node in self._view.live
        ]
        if not states:
            return []
        newest = max(r.position for r in states)
        states.sort(
            key=lambda r: (r.error is not None, r.position < newest, self._inflight[r.node])
        )
        return [r.node for r in states]

    def _scatter(self, coll: ClusterCollection, method: str, *args: Any) -> list[Any]:
        """`method(collection, shard, *args)` of one live replica of every shard (least loaded
        first; the next on failure or after replica_timeout); the answers in shard order."""
        import ray

        began = time.perf_counter()
        m, name = self.metrics, coll.name
        handles = self._view.handles  # queries never wait on the GCS for actor lookups
        candidates = {
            s: [n for n in self._candidates(coll, s) if n in handles] for s in range(coll.shards)
        }
        pending: dict[Any, tuple[int, int, float]] = {}
        results: dict[int, Any] = {}
        failures: dict[int, list[str]] = {}

        def launch(shard: int, attempt: int, why: str | None) -> None:
            if why is not None:
                failures.setdefault(shard, []).append(why)
            if attempt >= len(candidates[shard]):
                tried = "; ".join(failures.get(shard, [])) or "no live replica"
                raise Unavailable(
                    f"shard {shard} of collection {coll.name!r} has no replica that answered "
                    f"within {self.replica_timeout:g} s ({tried}): retry shortly"
                )
            if attempt > 0:
                m.shard_retries.labels(name, str(shard)).inc()
            node = candidates[shard][attempt]
            with self._lock:
                self._inflight[node] += 1
            ref = getattr(handles[node], method).remote(coll.name, shard, *args)
            pending[ref] = (shard, attempt, time.monotonic())

        def settle(ref: Any) -> tuple[int, int, float]:
            shard, attempt, started = pending.pop(ref)
            with self._lock:
                self._inflight[candidates[shard][attempt]] -= 1
            return shard, attempt, started

        for shard in range(coll.shards):
            launch(shard, 0, None)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0.02)
            for ref in ready:
                shard, attempt, _ = settle(ref)
                try:
                    results[shard] = ray.get(ref)
                    m.shard_calls.labels(name, str(shard), "ok").inc()
                except EmbedStackError as exc:
                    if not isinstance(exc, Unavailable):
                        raise _plain(exc) from None  # the query's own fault, not the replica's
                    m.shard_calls.labels(name, str(shard), "error").inc()
                    launch(shard, attempt + 1, exc.message)
                except Exception as exc:  # the replica died or its node went away
                    m.shard_calls.labels(name, str(shard), "error").inc()
                    launch(shard, attempt + 1, type(exc).__name__)
            now = time.monotonic()
            for ref, (shard, attempt, started) in list(pending.items()):
                if now - started > self.replica_timeout:
                    settle(ref)
                    node = candidates[shard][attempt]
                    m.shard_calls.labels(name, str(shard), "timeout").inc()
                    launch(shard, attempt + 1, f"{node} timed out")
        m.scatter_seconds.labels(name, method).observe(time.perf_counter() - began)
        return [results[s] for s in range(coll.shards)]

    # -- placement -----------------------------------------------------------------------------
    def refresh(self) -> View:
        """Ask every node actor for its status (bounded wait); the ones that answer are live;
        one that answered within `node_grace_s` keeps its place (with its last replicas)."""
        import ray

        if not ray.is_initialized():  # never start a Ray of our own from the reconcile loop
            raise Unavailable("not connected to a Ray cluster")
        handles = self._nodes.handles()
        refs = {handle.status.remote(): node for node, handle in handles.items()}
        ready, _ = ray.wait(list(refs), num_returns=len(refs), timeout=self._status_timeout)
        live: list[str] = []
        now = time.monotonic()
        for ref in ready:
            try:
                status = ray.get(ref)
            except Exception:
                continue
            live.append(refs[ref])
            self._seen[refs[ref]] = (now, [
                ReplicaState(
                    refs[ref], r["shard"], r["topic"], r["position"], r["error"],
                    r.get("stats", {}), r.get("upgrade"),
                )
                for r in status["replicas"]
            ])  # fmt: skip
        for node in [n for n, (at, _) in self._seen.items() if now - at > self.node_grace_s]:
            del self._seen[node]
        placed = [n for n in self._seen if n in handles]
        replicas: dict[tuple[str, int], list[ReplicaState]] = {}
        for node in placed:
            for state in self._seen[node][1]:
                replicas.setdefault((state.topic, state.shard), []).append(state)
        self._view = View(sorted(live), replicas, now, handles, sorted(placed))
        return self._view

    def wait_for_nodes(self, count: int, timeout: float = 120.0) -> View:
        """Refresh until `count` nodes answer (a starting node imports and opens its replicas
        first); Unavailable after `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            view = self.refresh()
            if len(view.live) >= count:
                return view
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"{len(view.live)} of {count} cluster nodes answered in {timeout:.0f} s"
                )
            time.sleep(0.2)

    def placement(self, coll: ClusterCollection, view: View | None = None) -> Placement:
        """Where `coll`'s shards belong over the placed nodes of `view` (default: the last)."""
        view = view or self._view
        return place(coll.shards, view.placed, coll.replicas, coll.topic) if view.placed else {}

    def _call(self, method: Any, *args: Any) -> Any:
        """One node call of the reconcile loop, bounded: a node that died since the status round
        is skipped (False) and retried on the next round."""
        try:
            return _get(method.remote(*args), ASSIGN_TIMEOUT_S)
        except Exception:
            log.warning("cluster node call failed; retried next round", exc_info=True)
            return False

    def reconcile(self) -> int:
        """Bring replicas in line with the placement over live nodes; returns replicas assigned."""
        view = self.refresh()
        if not view.live:
            return 0
        handles = self._nodes.handles()
        assigned = 0
        ends: dict[str, dict[int, int]] = {}
        for coll in self.catalog.list():
            placement = place(coll.shards, view.placed, coll.replicas, coll.topic)
            for shard, wanted in placement.items():
                have = {r.node: r for r in view.replicas.get((coll.topic, shard), [])}
                # a new replica starts from a snapshot of a live one (most advanced first)
                sources = [
                    r.node
                    for r in sorted(have.values(), key=lambda r: -r.position)
                    if r.node in view.live and r.error is None and r.position > 0
                ]
                for node in wanted:
                    if node not in have:
                        assign = handles[node].assign
                        assigned += int(self._call(assign, coll.to_json(), shard, sources))
                    elif LogTrimmed.__name__ in (have[node].error or "") and sources:
                        # behind the log's low-water mark: a snapshot again (not a move)
                        self._call(handles[node].resync, coll.to_json(), shard, sources)
                surplus = [n for n in have if n not in wanted]
                if not surplus:
                    continue
                if coll.topic not in ends:
                    ends[coll.topic] = self.log.end_offsets(coll.topic, coll.shards)
                caught_up = all(
                    n in have and have[n].position >= ends[coll.topic][shard] for n in wanted
                )
                for node in surplus if caught_up else []:
                    self._call(handles[node].drop, coll.name, shard)
            if self.log.trims:
                self._trim(coll, retention_points(coll.topic, placement, view))
        if assigned:
            self.refresh()
        return assigned

    def _trim(self, coll: ClusterCollection, points: dict[int, int]) -> None:
        """Delete the log records before each shard's retention point (when it moved)."""
        todo = {s: p for s, p in points.items() if p > self.trimmed.get((coll.topic, s), 0)}
        if not todo:
            return
        try:
            self.log.trim(coll.topic, todo)
        except Unavailable:
            log.warning("log retention of %s: retried next round", coll.topic, exc_info=True)
            return
        for shard, point in todo.items():
            self.trimmed[(coll.topic, shard)] = point

    def start(self, period: float = 0.5) -> None:
        """Reconcile in the background every `period` seconds until stop()."""

        def run() -> None:
            while not self._stop.wait(period):
                try:
                    self.moves += self.reconcile()
                    for hook in self.on_round:
                        hook()
                except Exception:
                    log.exception("cluster reconcile failed; retrying")

        self._loop = threading.Thread(target=run, name="cluster-reconcile", daemon=True)
        self._loop.start()

    def stop(self) -> None:
        self._stop.set()
        if self._loop is not None:
            self._loop.join(timeout=30)

    async def aquery(self, name: str, **kwargs: Any) -> list[dict[str, Any]]:
        return await asyncio.to_thread(self.query, name, **kwargs)


def _settings_job(coll: ClusterCollection) -> str:
    """The job id of a collection's latest settings change (one per collection incarnation)."""
    return f"settings.{coll.topic}"


def retention_points(topic: str, placement: Placement, view: View) -> dict[int, int]:
    """shard -> the offset every replica of it that the last status round saw is at or past,
    for the shards whose every placed replica answered without an error (what may be deleted
    from the log: everything before it). A replica on a node that did not answer is not waited
    for: if it comes back behind, it is resynced from a snapshot."""
    out = {}
    for shard, wanted in placement.items():
        seen = view.replicas.get((topic, shard), [])
        if not seen or any(r.error is not None for r in seen):
            continue
        if set(wanted) <= {r.node for r in seen}:
            out[shard] = min(r.position for r in seen)
    return out


def _get(ref: Any, timeout: float) -> Any:
    import ray

    return ray.get(ref, timeout=timeout)


def _plain(exc: EmbedStackError) -> EmbedStackError:
    """The domain error a replica raised, without Ray's wrapper (RayTaskError keeps it as
    `cause`)."""
    cause = getattr(exc, "cause", None)
    return cause if isinstance(cause, EmbedStackError) else exc
