"""Regions of a Ray cluster: a node's region is its Ray node label `embedstack.io/region`
(`ray start --labels embedstack.io/region=eu`; Ray >= 2.49 schedules on labels), or, for nodes
started without labels, its custom resource `es_region_<region>` (beside `es_node_<name>`);
the label wins when a node has both. Each region runs one gateway actor that routes inside it,
placed with a label selector where the region's nodes carry the label, else by the resource.

The gateway is a cluster router (cluster/router.py) restricted to its region: it sees only the
shard node actors of its region's nodes (RegionalNodes), so shards are placed there only; it
writes to its region's broker only; its catalog entries live under a prefix of their own. It is
pinned to the region (label or resource), so Ray restarts it on another node of the region
when its node dies, and nowhere once the whole region is gone. A search from another region is
stripped to the policy's crossing kinds here, inside the region, before the answer leaves it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from embedstack.cluster.catalog import RedisCatalog
from embedstack.cluster.coordination import catalog_client
from embedstack.cluster.log import ShardLog
from embedstack.cluster.ray.node import NAMESPACE, node_resource
from embedstack.cluster.ray.nodes import RayNodes, detached_actor
from embedstack.cluster.residency import strip
from embedstack.cluster.router import ClusterRouter
from embedstack.errors import Unavailable
from embedstack.inference.backend import ModelRegistry
from embedstack.registry.hybrid import Retrieval
from embedstack.storage.store import DocumentRow

NODE_PREFIX = node_resource("")
REGION_PREFIX = "es_region_"
REGION_LABEL = "embedstack.io/region"
REGION_CACHE_S = 1.0
FORGET_THREADS = 8  # a write's existence checks of moved documents in another region


def region_resource(region: str) -> str:
    return f"{REGION_PREFIX}{region}"


def gateway_name(region: str) -> str:
    return f"embedstack-gateway-{region}"


def region_catalog_prefix(prefix: str, region: str) -> str:
    """Where a region's cluster collections and jobs live in the shared catalog."""
    return f"{prefix}:region:{region}"


def region_labels(region: str) -> dict[str, str]:
    """The Ray node labels of a node of `region`."""
    return {REGION_LABEL: region}


def node_regions(infos: Sequence[dict[str, Any]]) -> list[tuple[str, str, bool, bool]]:
    """(node name, region, alive, labelled) of every node in `infos` (ray.nodes() rows) that
    offers es_node_* and names one region: by its label, else by one es_region_* resource."""
    out = []
    for info in infos:
        res = info.get("Resources") or {}
        names = [k.removeprefix(NODE_PREFIX) for k in res if k.startswith(NODE_PREFIX)]
        label = (info.get("Labels") or {}).get(REGION_LABEL)
        regions = [k.removeprefix(REGION_PREFIX) for k in res if k.startswith(REGION_PREFIX)]
        region = label or (regions[0] if len(regions) == 1 else None)
        if region is not None:
            alive = bool(info.get("Alive"))
            out += [(name, region, alive, label is not None) for name in names]
    return out


def ray_node_regions() -> list[tuple[str, str, bool]]:
    """(node name, region, alive) of every Ray node offering es_node_* and a region."""
    import ray

    return [row[:3] for row in node_regions(ray.nodes())]


class RegionMap:
    """Node name -> region, and the regions with a live node, read from Ray at most once per
    REGION_CACHE_S (a node keeps the region it was seen with, also after it died)."""

    def __init__(self, reader: Callable[[], list[tuple[str, str, bool]]] = ray_node_regions):
        self._read = reader
        self._regions: dict[str, str] = {}
        self._alive: set[str] = set()
        self._at = 0.0
        self._lock = threading.Lock()

    def _refresh(self, force: bool = False) -> None:
        with self._lock:
            if not force and time.monotonic() - self._at < REGION_CACHE_S:
                return
            rows = self._read()
            self._at = time.monotonic()
        for name, region, _ in rows:
            self._regions[name] = region
        self._alive = {region for _, region, alive in rows if alive}

    def region_of(self, node: str) -> str | None:
        if node not in self._regions:
            self._refresh()
        return self._regions.get(node)

    def live_regions(self) -> set[str]:
        self._refresh()
        return set(self._alive)


class RegionalNodes(RayNodes):
    """The shard node actors of one region's nodes only: what a region's router places on."""

    def __init__(self, region: str, regions: RegionMap | None = None) -> None:
        super().__init__()
        self.region = region
        self._map = regions or RegionMap()

    def handles(self) -> dict[str, Any]:
        return {n: h for n, h in super().handles().items() if self._map.region_of(n) == self.region}


class RegionGateway:
    """A region's router, as a Ray actor on a node of the region (see the module doc)."""

    def __init__(
        self,
        region: str,
        catalog_url: str,
        prefix: str,
        bootstrap: str,
        models_factory: Callable[[], ModelRegistry],
        default_model: str,
        replica_timeout: float,
        period: float,
    ) -> None:
        self.region = region
        client = catalog_client(catalog_url)
        catalog = RedisCatalog(client, prefix=region_catalog_prefix(prefix, region))
        self.router = ClusterRouter(
            catalog, ShardLog(bootstrap), RegionalNodes(region), models_factory(), default_model,
            replica_timeout=replica_timeout,
        )  # fmt: skip
        self.router.refresh()
        self.router.start(period)

    def ping(self) -> str:
        return self.region

    def ray_node(self) -> str:
        """The id of the Ray node this gateway runs on (hex)."""
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def nodes(self) -> list[str]:
        """The region's live nodes as the last status round saw them."""
        return list(self.router.refresh().live)

    def create_collection(
        self, name: str, shards: int, replicas: int, settings: dict[str, Any]
    ) -> dict[str, Any]:
        return self.router.create_collection(name, shards, replicas, **settings).to_json()

    def delete_collection(self, name: str) -> None:
        self.router.delete_collection(name)

    def put_documents(self, name: str, rows: Sequence[DocumentRow]) -> str:
        return self.router.put_documents(name, rows)

    def job(self, job_id: str) -> dict[str, Any]:
        return self.router.job(job_id)

    def counts(self, name: str) -> dict[str, int]:
        """Documents and serving-space vectors over one most-advanced replica per shard."""
        coll = self.router.catalog.get(name)
        out = {"documents": 0, "vectors": 0}
        for states in self.router.replica_states(coll).values():
            if states:
                stats = max(states, key=lambda r: r.position).stats
                out["documents"] += int(stats.get("documents", 0))
                out["vectors"] += int(stats.get("vectors", {}).get(coll.space_id, 0))
        return out

    def search(
        self,
        name: str,
        space_id: str,
        text: str | None,
        vector: np.ndarray | None,
        k: int,
        flt: dict[str, Any] | None,
        group: bool,
        crossing: Sequence[str] | None,
        how: Retrieval | None = None,
        knobs: dict[str, int] | None = None,
    ) -> list[dict[str, Any]]:
        """Top-k of the region's shards: dense (a query text is embedded here by the region's
        model for space `space_id`, the federated collection's: SpaceMismatch or Conflict if
        the region's collection or model differ), or lexical / hybrid as `how` says (fused
        over the region's shards). With `crossing` (a caller in another region), only those
        kinds of each hit leave this actor. `knobs`: the query's index parameters."""
        coll = self.router.catalog.get(name)
        space, _ = self.router.space_of(coll, space_id)
        mode = how.mode if how is not None else "dense"
        vec = None if vector is None else np.asarray(vector, np.float32)
        if vec is None and mode != "lexical":
            vec = self.router.embed_query(coll, str(text), space)
        if how is None or (mode == "dense" and (not group or how.doc_scoring == "max")):
            assert vec is not None
            hits = self.router.search(coll, space, vec, k, flt, group, knobs)
        else:
            hits = self.router.fused_search(coll, space, vec, text, k, flt, group, how, knobs)
        return hits if crossing is None else strip(hits, crossing)

    def get_document(
        self, name: str, document_id: str, crossing: Sequence[str] | None
    ) -> dict[str, Any] | None:
        """A stored document as hits carry it (document_id, text, metadata) or None; with
        `crossing`, only those kinds leave this actor."""
        found = self.router.get_document(self.router.catalog.get(name), document_id)
        if found is None:
            return None
        doc = {"document_id": found["id"], "text": found["text"], "metadata": found["metadata"]}
        return doc if crossing is None else strip([doc], crossing)[0]

    def forget(self, name: str, document_ids: Sequence[str]) -> str | None:
        """Delete, through the region's log, those of `document_ids` the region holds (their
        region changed: re-ingested into another one); the job id of the deletes, None when
        the region held none of them."""
        coll = self.router.catalog.get(name)
        with ThreadPoolExecutor(FORGET_THREADS) as pool:  # one replica call per id, at once
            found = list(pool.map(lambda d: self.router.get_document(coll, d), document_ids))
        held = [d for d, doc in zip(document_ids, found, strict=True) if doc is not None]
        return self.router.delete_documents(name, held) if held else None

    def delete_document(self, name: str, document_id: str, wait_s: float) -> bool:
        """Delete a document through the region's log; True once every placed replica applied
        it, False when the region does not have it (Unavailable after `wait_s` seconds)."""
        coll = self.router.catalog.get(name)
        if self.router.get_document(coll, document_id) is None:
            return False
        job = self.router.delete_document(name, document_id)
        if not self.router.wait_job(job, wait_s):
            raise Unavailable(
                f"the delete of {document_id!r} is in region {self.region}'s log but not yet "
                f"applied by every replica after {wait_s:g} s: retry to check"
            )
        return True

    def stop(self) -> None:
        self.router.stop()


def start_gateway(
    region: str,
    catalog_url: str,
    prefix: str,
    bootstrap: str,
    models_factory: Callable[[], ModelRegistry],
    default_model: str,
    replica_timeout: float = 1.0,
    period: float = 0.5,
) -> Any:
    """The gateway actor of `region` (created once, found by name after): detached, on a node
    of the region, restarted on another node of the region when its node dies. Placed by the
    region's label when a node of the region carries it, else by the es_region_* resource."""
    import ray

    labelled = any(row[1] == region and row[3] for row in node_regions(ray.nodes()))
    return detached_actor(
        RegionGateway, gateway_name(region), None if labelled else region_resource(region),
        region, catalog_url, prefix, bootstrap, models_factory, default_model, replica_timeout,
        period, labels=region_labels(region) if labelled else None,
    )  # fmt: skip


def find_gateway(region: str) -> Any | None:
    import ray

    try:
        return ray.get_actor(gateway_name(region), namespace=NAMESPACE)
    except ValueError:
        return None
