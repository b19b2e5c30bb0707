"""Federated regions: what an API node does when the cluster spans regions with data residency.

Every collection has a residency policy (residency.py). It exists once per allowed region as
an ordinary cluster collection of that region's gateway (cluster/ray/regions.py): its shards
placed on that region's nodes only, its log topic on that region's broker only. This router
keeps the federated entry (policy, config) in the shared catalog and talks to the gateways:

- writes: each document goes to the gateway of the region its policy field names (validated
  first: 4xx naming the allowed regions), which appends it to its region's log;
- queries: the query TEXT goes to the gateways of the regions it may read (all of the
  policy's, or the ones it names); each embeds it with its region's own model (parity checked
  against the collection's space), searches its shards and, for a caller of another region,
  strips its hits to the policy's crossing kinds before they leave the region; the hits merge
  here by score. A caller's query vector goes only to the caller's own region unless the
  policy's `query` kinds list "vector". A region-local query talks to its own region's
  gateway only.
- every answer's payload bytes are counted per (from_region, to_region, kind) on
  embedstack_region_payload_bytes_total, so what crossed a border can be checked;
- a region with no live node (or whose gateway does not answer) makes what needs it fail with
  RegionUnavailable naming the region (503); everything else keeps working.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from embedstack.cluster.catalog import RedisCatalog
from embedstack.cluster.keys import RedisKeys
from embedstack.cluster.residency import (
    DOCUMENTS_KIND,
    IDS_KIND,
    QUERY_TEXT_KIND,
    QUERY_VECTOR_KIND,
    ResidencyPolicy,
    check_region,
    payload_bytes,
)
from embedstack.cluster.shards import check_layout
from embedstack.errors import Conflict, EmbedStackError, InvalidInput, NotFound, Unavailable
from embedstack.inference.backend import ModelRegistry
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionConfigs
from embedstack.registry.hybrid import Retrieval
from embedstack.storage.store import DocumentRow
from embedstack.types import CollectionConfig

JOB_TTL_S = 7 * 24 * 3600
DELETE_WAIT_S = 30.0  # a document delete answers once every replica applied it
ADMIN_S = 180.0  # creating a collection opens a replica on each placed node of the region
CLIENT = "client"  # a caller outside every region (an API node without one, no 'region' sent)


class RegionUnavailable(Unavailable):
    """A region the request needs has no live node, or its gateway did not answer."""

    def __init__(self, region: str, why: str) -> None:
        super().__init__(
            f"region {region} unavailable ({why}): its data cannot be read or written until "
            f"it is back; queries naming only other regions ('regions': [...]) still work"
        )
        self.region = region


@dataclass(frozen=True)
class FederatedCollection:
    name: str
    policy: ResidencyPolicy
    config: CollectionConfig
    space_id: str
    created_at: float
    shards: int
    replicas: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "policy": self.policy.to_json(), "config": self.config.to_json(),
            "space_id": self.space_id, "created_at": self.created_at, "shards": self.shards,
            "replicas": self.replicas,
        }  # fmt: skip

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> FederatedCollection:
        return cls(
            str(d["name"]), ResidencyPolicy.from_json(d["policy"]),
            CollectionConfig.from_json(d["config"]), str(d["space_id"]),
            float(d["created_at"]), int(d["shards"]), int(d["replicas"]),
        )  # fmt: skip


class FederatedRouter:
    """`gateways`: region -> gateway actor handle (every region of the federation);
    `live_regions`: the regions with a live node now (cluster/ray/regions.py RegionMap);
    `home`: this API node's region (queries default to it; None: each query names its
    caller's region)."""

    def __init__(
        self,
        client: Any,
        gateways: Mapping[str, Any],
        live_regions: Callable[[], set[str]],
        models: ModelRegistry,
        default_model: str,
        metrics: Metrics,
        home: str | None = None,
        timeout: float = 5.0,
        prefix: str = "embedstack",
    ) -> None:
        self._r = client
        self.gateways = dict(gateways)
        self._live = live_regions
        self.models = models
        self._configs = CollectionConfigs(models, default_model)
        self.metrics = metrics
        self.home = home
        self.timeout = timeout
        self.prefix = prefix
        self._collections = f"{prefix}:federation:collections"
        self._jobs = f"{prefix}:federation:job:"
        self._names = RedisCatalog(client, prefix=f"{prefix}:federation")
        self._aliases = f"{prefix}:federation:aliases"  # the alias hash of self._names
        self._moved = f"{prefix}:federation:moved:"  # + region: ids to delete once it is back
        if home is not None and home not in self.gateways:
            raise InvalidInput(f"home region {home!r} is not one of {', '.join(self.regions)}")

    @property
    def regions(self) -> list[str]:
        return sorted(self.gateways)

    def keys(self) -> RedisKeys:
        """The cluster's API keys, in the shared catalog's Redis."""
        return RedisKeys(self._r, self.prefix)

    # -- regions ---------------------------------------------------------------------------
    def live(self) -> dict[str, bool]:
        """Each region of the federation: whether it has a live node now."""
        live = self._live()
        return {r: r in live for r in self.regions}

    def _require(self, regions: Sequence[str]) -> None:
        live = self._live()
        for region in regions:
            if region not in live:
                raise RegionUnavailable(region, "no live node")

    def _call(self, region: str, method: str, *args: Any, timeout: float | None = None) -> Any:
        self._require([region])
        return self._wait(region, getattr(self.gateways[region], method).remote(*args), timeout)

    def _wait(self, region: str, ref: Any, timeout: float | None = None) -> Any:
        import ray

        try:
            return ray.get(ref, timeout=timeout or self.timeout)
        except EmbedStackError as exc:  # the gateway's own answer (Ray wraps it; `cause` is it)
            cause = getattr(exc, "cause", None)
            error = cause if isinstance(cause, EmbedStackError) else exc
            if type(error) is Unavailable:  # a region-side outage (not e.g. a full disk)
                raise RegionUnavailable(region, error.message) from None
            raise error from None
        except Exception as exc:  # the gateway died, its node is gone, or it did not answer
            raise RegionUnavailable(region, f"its gateway: {type(exc).__name__}") from None

    def caller(self, region: str | None) -> str:
        """The caller's region: the one a request names, else this API node's, else "client"
        (outside every region: each region answers it with its crossing kinds only)."""
        if region is None:
            return self.home or CLIENT
        check_region(region)
        if region not in self.gateways:
            raise InvalidInput(f"region {region!r} is not one of {', '.join(self.regions)}")
        if self.home is not None and region != self.home:
            raise InvalidInput(
                f"this API node serves callers of region {self.home}; a caller of region "
                f"{region} uses an API node of its own region"
            )
        return region

    # -- collections -----------------------------------------------------------------------
    def create_collection(
        self,
        name: str,
        residency: Mapping[str, Any],
        shards: int = 8,
        replicas: int = 2,
        **settings: Any,
    ) -> FederatedCollection:
        policy = ResidencyPolicy.parse(residency, self.regions)
        check_layout(shards, replicas)
        config, space_id = self._configs.config_for(name, **settings)
        if self._r.hexists(self._collections, name) or self._r.hexists(self._aliases, name):
            raise Conflict(f"collection or alias {name!r} already exists: pick another name")
        self._require(policy.regions)
        coll = FederatedCollection(name, policy, config, space_id, time.time(), shards, replicas)
        for region in policy.regions:
            self._call(
                region, "create_collection", name, shards, replicas, settings, timeout=ADMIN_S
            )
        if not self._r.hsetnx(self._collections, name, orjson.dumps(coll.to_json())):
            raise Conflict(f"collection {name!r} already exists: pick another name")
        return coll

    def get(self, name: str) -> FederatedCollection:
        """A collection by name or alias."""
        target = self._r.hget(self._aliases, name)
        raw = self._r.hget(self._collections, target.decode() if target is not None else name)
        if raw is None:
            raise NotFound(f"collection {name!r} does not exist")
        return FederatedCollection.from_json(orjson.loads(raw))

    resolve = get  # (what a route's TenantAccess resolves names with)

    # -- aliases: names of the federation, in the shared catalog (names only cross) -----------
    # (the cluster catalog's alias hash, under the federation's prefix; its collection entries
    # are ours, so set_alias checks them here)
    def set_alias(self, alias: str, target: str) -> None:
        if not self._r.hexists(self._collections, target):  # a collection, not an alias
            raise NotFound(f"collection {target!r} does not exist")
        if self._r.hexists(self._collections, alias):
            raise Conflict(f"{alias!r} is a collection: pick another alias name")
        self._r.hset(self._aliases, alias, target)

    def aliases(self) -> dict[str, str]:
        return self._names.aliases()

    def delete_alias(self, alias: str) -> None:
        self._names.delete_alias(alias)

    def collections(self) -> list[FederatedCollection]:
        rows = self._r.hgetall(self._collections)
        return sorted(
            (FederatedCollection.from_json(orjson.loads(v)) for v in rows.values()),
            key=lambda c: c.name,
        )

    def delete_collection(self, name: str) -> None:
        """Delete a collection by its name (not an alias), with the aliases pointing at it."""
        if not self._r.hexists(self._collections, name):
            raise NotFound(f"collection {name!r} does not exist (an alias is deleted with "
                           "DELETE /v1/aliases/NAME)")  # fmt: skip
        coll = self.get(name)
        self._require(coll.policy.regions)
        for region in coll.policy.regions:
            self._call(region, "delete_collection", name, timeout=ADMIN_S)
        self._r.hdel(self._collections, name)
        pointing = [a for a, target in self.aliases().items() if target == name]
        if pointing:
            self._r.hdel(self._aliases, *pointing)

    def counts(self, coll: FederatedCollection) -> dict[str, dict[str, int] | None]:
        """Documents and vectors held in each region (None: the region is unavailable)."""
        out: dict[str, dict[str, int] | None] = {}
        for region in coll.policy.regions:
            try:
                out[region] = self._call(region, "counts", coll.name)
            except RegionUnavailable:
                out[region] = None
        return out

    # -- writes ----------------------------------------------------------------------------
    def split(
        self, coll: FederatedCollection, rows: Sequence[DocumentRow]
    ) -> dict[str, list[DocumentRow]]:
        """Documents by the region their policy field names (InvalidInput for any other)."""
        out: dict[str, list[DocumentRow]] = {}
        for row in rows:
            out.setdefault(coll.policy.region_of(row.id, row.metadata), []).append(row)
        return out

    def put_documents(
        self, name: str, rows: Sequence[DocumentRow], caller: str | None = None
    ) -> str:
        """Hand each document to its region's gateway (which logs it on its region's broker);
        returns a job id once every region acknowledged."""
        coll = self.get(name)
        by_region = self.split(coll, rows)
        self._require(list(by_region))  # all or nothing, as far as liveness can tell
        origin = self.caller(caller)
        jobs = {}
        for region, docs in by_region.items():
            jobs[region] = self._call(region, "put_documents", coll.name, docs)
            size = sum(len(orjson.dumps([d.id, d.text, d.metadata])) for d in docs)
            size += sum(len(d.vector) for d in docs if d.vector is not None)
            self.metrics.region_bytes.labels(origin, region, DOCUMENTS_KIND).inc(size)
        moved = self._forget_moved(coll, by_region, origin)
        job_id = uuid.uuid4().hex
        value = {"collection": coll.name, "regions": jobs, "moved": moved, "documents": len(rows),
                 "created_at": time.time()}  # fmt: skip
        self._r.set(self._jobs + job_id, orjson.dumps(value), ex=JOB_TTL_S)
        return job_id

    def _forget_moved(
        self, coll: FederatedCollection, by_region: Mapping[str, Sequence[DocumentRow]], origin: str
    ) -> dict[str, str]:
        """After the documents were logged in their regions: delete each one's old copy from
        the collection's other regions (a document whose region field changed). Only ids
        cross. A region that is down now keeps its ids in the catalog (`moved:REGION`, ids
        only) and deletes them on a later write once it is back. Returns region -> delete job."""
        live = self._live()
        jobs = {}
        for region in coll.policy.regions:
            pending = self._moved + region
            stale = [d for r, docs in by_region.items() if r != region for d in docs]
            ids = [row.id for row in stale]
            here = {row.id for row in by_region.get(region, [])}  # moved back: keep them
            earlier = [m for m in self._r.smembers(pending) if orjson.loads(m)[0] == coll.name]
            ids += [i for i in (orjson.loads(m)[1] for m in earlier) if i not in here]
            if not ids:
                if earlier:
                    self._r.srem(pending, *earlier)
                continue
            try:
                if region not in live:
                    raise RegionUnavailable(region, "no live node")
                job = self._call(region, "forget", coll.name, ids, timeout=DELETE_WAIT_S)
            except RegionUnavailable:
                fresh = [orjson.dumps([coll.name, row.id]) for row in stale]
                if fresh:
                    self._r.sadd(pending, *fresh)
                continue
            self.metrics.region_bytes.labels(origin, region, IDS_KIND).inc(len(orjson.dumps(ids)))
            if earlier:
                self._r.srem(pending, *earlier)
            if job is not None:
                jobs[region] = job
        return jobs

    def job(self, job_id: str) -> dict[str, Any]:
        raw = self._r.get(self._jobs + job_id)
        if raw is None:
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        job: dict[str, Any] = orjson.loads(raw)
        parts: dict[str, dict[str, Any]] = {"regions": {}, "moved": {}}
        for what, jobs in parts.items():
            for region, jid in job.get(what, {}).items():
                part = self._call(region, "job", jid)
                part["shards"] = {str(k): v for k, v in part["shards"].items()}  # JSON keys
                jobs[region] = part
        done = all(j["status"] == "done" for jobs in parts.values() for j in jobs.values())
        return {**job, "id": job_id, "status": "done" if done else "running", **parts}

    def wait_job(self, job_id: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.job(job_id)["status"] != "done":
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def delete_document(self, name: str, document_id: str) -> list[str]:
        """Delete a document from every region that holds it (all of the policy's regions must
        be live: any might); returns those regions once each applied it (NotFound if none)."""
        coll = self.get(name)
        self._require(coll.policy.regions)
        wait = DELETE_WAIT_S
        deleted = [
            r
            for r in coll.policy.regions
            if self._call(r, "delete_document", coll.name, document_id, wait, timeout=wait + 10)
        ]
        if not deleted:
            raise NotFound(f"document {document_id!r} does not exist in collection {name!r}")
        return deleted

    # -- reads -----------------------------------------------------------------------------
    def get_document(
        self, name: str, document_id: str, caller: str | None = None
    ) -> dict[str, Any]:
        """A document from the region that holds it, with its "region"; for a caller of
        another region only the policy's crossing kinds (ids, optionally text, metadata).
        NotFound when no region has it; RegionUnavailable when a region that might is down."""
        coll = self.get(name)
        home = self.caller(caller)
        live = self._live()
        regions = sorted(coll.policy.regions, key=lambda r: r != home)  # its own region first
        down = []
        for region in regions:
            if region not in live:
                down.append(region)
                continue
            crossing = None if region == home else list(coll.policy.crossing)
            doc = self._call(region, "get_document", coll.name, document_id, crossing)
            if doc is not None:
                for kind, size in payload_bytes([doc]).items():
                    self.metrics.region_bytes.labels(region, home, kind).inc(size)
                return {**doc, "region": region}
        if down:
            raise RegionUnavailable(down[0], "no live node; the document may be there")
        raise NotFound(f"collection {name!r} has no document {document_id!r}")

    def query(
        self,
        name: str,
        text: str | None = None,
        vector: np.ndarray | None = None,
        k: int = 10,
        flt: dict[str, Any] | None = None,
        group: bool = False,
        caller: str | None = None,
        regions: Sequence[str] | None = None,
        how: Retrieval | None = None,
        knobs: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """{"hits": best-first over the regions read, each with its "region"; "regions": the
        regions read, "caller": the caller's region}. `how`: dense (default), lexical or
        hybrid; each region searches (and fuses) its own shards, the hits merge here by score.
        A hit of another region than the caller's carries only the policy's crossing kinds;
        the query crosses as its text (or, where the policy allows, as the caller's vector);
        `knobs`: its per-query index parameters, passed to every region's replicas."""
        coll = self.get(name)
        home = self.caller(caller)
        targets = coll.policy.targets(regions)
        mode = how.mode if how is not None else "dense"
        if mode == "dense" and (vector is None) == (text is None):
            raise InvalidInput("send exactly one of 'text' and 'vector'")
        self._check_query(coll, home, targets, vector is not None, text is not None, mode)
        self._require(targets)
        sent = {QUERY_TEXT_KIND: 0 if text is None else len(text.encode()),
                QUERY_VECTOR_KIND: 0 if vector is None else vector.nbytes}  # fmt: skip
        refs = {}
        for region in targets:
            crossing = None if region == home else list(coll.policy.crossing)
            gateway = self.gateways[region]
            refs[region] = gateway.search.remote(
                coll.name, coll.space_id, text, vector, k, flt, group, crossing, how, knobs
            )
            for kind, size in sent.items():
                if size:
                    self.metrics.region_bytes.labels(home, region, kind).inc(size)
        hits = []
        for region, ref in refs.items():
            part: list[dict[str, Any]] = self._wait(region, ref)
            for kind, size in payload_bytes(part).items():
                self.metrics.region_bytes.labels(region, home, kind).inc(size)
            hits += [{**h, "region": region} for h in part]
        lower_first = mode == "dense" and coll.config.metric == "l2"  # fused: higher is better
        hits.sort(key=lambda h: h["score"], reverse=not lower_first)
        return {"hits": hits[:k], "regions": targets, "caller": home}

    def _check_query(
        self,
        coll: FederatedCollection,
        home: str,
        targets: Sequence[str],
        vector: bool,
        text: bool,
        mode: str,
    ) -> None:
        """What the query would carry across a border is what the policy allows (4xx naming
        the fix otherwise); a text query embedded by the regions needs a model."""
        foreign = [r for r in targets if r != home]
        if vector and foreign and "vector" not in coll.policy.query:
            only = f" or read only region {home} ('regions': ['{home}'])" if home in targets else ""
            raise InvalidInput(
                f"a query vector may not leave the caller's region ({home}) for "
                f"{', '.join(foreign)} under collection {coll.name!r}'s residency policy: send "
                f"'text' (each region embeds it){only}"
            )
        if text and not vector and mode != "lexical" and not coll.config.model:
            raise InvalidInput(
                f"collection {coll.name!r} has no model (bring-your-own vectors): "
                "send 'vector' instead of 'text'"
            )
