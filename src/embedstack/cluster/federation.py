"""Federated regions: what an API node does when the cluster spans regions with data residency.

Every collection has a residency policy (residency.py). It exists once per allowed region as
an ordinary cluster collection of that region's gateway (cluster/ray/regions.py): its shards
placed on that region's nodes only, its log topic on that region's broker only. This router
keeps the federated entry (policy, config) in the shared catalog and talks to the gateways:

- writes: each document goes to the gateway of the region its policy field names (validated
  first: 4xx naming the allowed regions), which appends it to its region's log;
- queries: the query is embedded here, sent to the gateways of the regions it may read (all of
  the policy's, or the ones it names), each searches its shards and, for a caller of another
  region, strips its hits to the policy's crossing kinds before they leave the region; the
  hits merge here by score. A region-local query talks to its own region's gateway only.
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

from embedstack.cluster.keys import RedisKeys
from embedstack.cluster.residency import (
    DOCUMENTS_KIND,
    QUERY_KIND,
    ResidencyPolicy,
    check_region,
    payload_bytes,
)
from embedstack.cluster.shards import check_layout
from embedstack.errors import Conflict, EmbedStackError, InvalidInput, NotFound, Unavailable
from embedstack.inference.backend import ModelRegistry
from embedstack.inference.parity import check_parity
from embedstack.obs.metrics import Metrics
from embedstack.registry.collections import CollectionConfigs
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
        if self._r.hexists(self._collections, name):
            raise Conflict(f"collection {name!r} already exists: pick another name")
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
        raw = self._r.hget(self._collections, name)
        if raw is None:
            raise NotFound(f"collection {name!r} does not exist")
        return FederatedCollection.from_json(orjson.loads(raw))

    def collections(self) -> list[FederatedCollection]:
        rows = self._r.hgetall(self._collections)
        return sorted(
            (FederatedCollection.from_json(orjson.loads(v)) for v in rows.values()),
            key=lambda c: c.name,
        )

    def delete_collection(self, name: str) -> None:
        coll = self.get(name)
        self._require(coll.policy.regions)
        for region in coll.policy.regions:
            self._call(region, "delete_collection", name, timeout=ADMIN_S)
        self._r.hdel(self._collections, name)

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
            jobs[region] = self._call(region, "put_documents", name, docs)
            size = sum(len(orjson.dumps([d.id, d.text, d.metadata])) for d in docs)
            size += sum(len(d.vector) for d in docs if d.vector is not None)
            self.metrics.region_bytes.labels(origin, region, DOCUMENTS_KIND).inc(size)
        job_id = uuid.uuid4().hex
        value = {"collection": name, "regions": jobs, "documents": len(rows),
                 "created_at": time.time()}  # fmt: skip
        self._r.set(self._jobs + job_id, orjson.dumps(value), ex=JOB_TTL_S)
        return job_id

    def job(self, job_id: str) -> dict[str, Any]:
        raw = self._r.get(self._jobs + job_id)
        if raw is None:
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        job: dict[str, Any] = orjson.loads(raw)
        regions = {}
        for region, jid in job["regions"].items():
            part = self._call(region, "job", jid)
            part["shards"] = {str(k): v for k, v in part["shards"].items()}  # JSON keys
            regions[region] = part
        done = all(j["status"] == "done" for j in regions.values())
        return {**job, "id": job_id, "status": "done" if done else "running",
                "regions": regions}  # fmt: skip

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
            if self._call(r, "delete_document", name, document_id, wait, timeout=wait + 10)
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
            doc = self._call(region, "get_document", name, document_id, crossing)
            if doc is not None:
                for kind, size in payload_bytes([doc]).items():
                    self.metrics.region_bytes.labels(region, home, kind).inc(size)
                return {**doc, "region": region}
        if down:
            raise RegionUnavailable(down[0], "no live node; the document may be there")
        raise NotFound(f"collection {name!r} has no document {document_id!r}")

    def embed_query(self, coll: FederatedCollection, text: str) -> np.ndarray:
        model = coll.config.model
        if not model:
            raise InvalidInput(
                f"collection {coll.name!r} has no model (bring-your-own vectors): "
                "send 'vector' instead of 'text'"
            )
        embedder = self.models.get(model)
        check_parity(embedder.spec, coll.name, coll.space_id)
        return np.asarray(embedder.embed_batch([text]), np.float32)[0]

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
    ) -> dict[str, Any]:
        """{"hits": best-first over the regions read, each with its "region"; "regions": the
        regions read, "caller": the caller's region}. A hit of another region than the
        caller's carries only the policy's crossing kinds."""
        coll = self.get(name)
        home = self.caller(caller)
        targets = coll.policy.targets(regions)
        self._require(targets)
        if (vector is None) == (text is None):
            raise InvalidInput("send exactly one of 'text' and 'vector'")
        vec = vector if vector is not None else self.embed_query(coll, str(text))
        refs = {}
        for region in targets:
            crossing = None if region == home else list(coll.policy.crossing)
            gateway = self.gateways[region]
            refs[region] = gateway.search.remote(name, vec, k, flt, group, crossing)
            self.metrics.region_bytes.labels(home, region, QUERY_KIND).inc(vec.nbytes)
        hits = []
        for region, ref in refs.items():
            part: list[dict[str, Any]] = self._wait(region, ref)
            for kind, size in payload_bytes(part).items():
                self.metrics.region_bytes.labels(region, home, kind).inc(size)
            hits += [{**h, "region": region} for h in part]
        hits.sort(key=lambda h: h["score"], reverse=coll.config.metric != "l2")
        return {"hits": hits[:k], "regions": targets, "caller": home}
