"""The cluster catalog in Redis: collections (config, spaces, topic, shard layout), aliases, jobs
and model upgrades, shared by every API node. Redis is the coordination store: a primary with
replicas behind Sentinel, every write confirmed by a replica before it returns, so the catalog
survives the loss of any one of its processes (cluster/coordination.py; one plain server for
development); each server keeps an fsync-per-write append-only file (infra/local.py). No API
node holds catalog state of its own."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import orjson

from embedstack.cluster.coordination import CatalogRedis, catalog_client
from embedstack.cluster.keys import RedisKeys
from embedstack.errors import Conflict, NotFound, Unavailable
from embedstack.storage.catalog import UpgradeRecord
from embedstack.types import CollectionConfig

JOB_TTL_S = 7 * 24 * 3600
WATCH_RETRIES = 50


@dataclass(frozen=True)
class SpaceRef:
    """A non-serving embedding space of a cluster collection (shadow or previous)."""

    space_id: str
    model: str | None

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> SpaceRef | None:
        return cls(str(data["space_id"]), data["model"]) if data else None


@dataclass(frozen=True)
class ClusterCollection:
    """`space_id` and `model` name the serving space (what queries embed with and search);
    `shadow` is being back-filled by an upgrade, `previous` is kept for rollback. Replicas write
    every one of them. `config.model` stays the model the collection was created with."""

    name: str
    config: CollectionConfig
    space_id: str
    created_at: float
    topic: str  # the log topic: unique per incarnation, so a re-created name starts empty
    shards: int
    replicas: int
    model: str | None = None  # None: config.model (a new collection serves its first space)
    shadow: SpaceRef | None = None
    previous: SpaceRef | None = None

    def __post_init__(self) -> None:
        if self.model is None:
            object.__setattr__(self, "model", self.config.model)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config.to_json(),
            "space_id": self.space_id,
            "created_at": self.created_at,
            "topic": self.topic,
            "shards": self.shards,
            "replicas": self.replicas,
            "model": self.model,
            "shadow": asdict(self.shadow) if self.shadow else None,
            "previous": asdict(self.previous) if self.previous else None,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterCollection:
        config = CollectionConfig.from_json(data["config"])
        return cls(
            str(data["name"]),
            config,
            str(data["space_id"]),
            float(data["created_at"]),
            str(data["topic"]),
            int(data["shards"]),
            int(data["replicas"]),
            data.get("model", config.model),
            SpaceRef.from_json(data.get("shadow")),
            SpaceRef.from_json(data.get("previous")),
        )


Change = Callable[
    [ClusterCollection, UpgradeRecord | None], tuple[ClusterCollection, UpgradeRecord | None]
]


class RedisCatalog:
    def __init__(self, client: CatalogRedis, prefix: str = "embedstack") -> None:
        self._r = client
        self.prefix = prefix
        self._collections = f"{prefix}:collections"
        self._aliases = f"{prefix}:aliases"
        self._jobs = f"{prefix}:job:"
        self._upgrades = f"{prefix}:upgrade:"  # + collection name: its latest upgrade

    @classmethod
    def from_url(cls, url: str, **options: Any) -> RedisCatalog:
        """`url`: redis://... or redis+sentinel://... (coordination.URL_FORMS); `options`:
        catalog_client's (ack_ms, failover_s)."""
        return cls(catalog_client(url, **options))

    def client(self) -> Any:
        """The Redis client, for what lives beside the catalog (cluster/observed.py)."""
        return self._r

    def keys(self) -> RedisKeys:
        """The cluster's API keys, in the same Redis."""
        return RedisKeys(self._r, self.prefix)

    def create(self, coll: ClusterCollection) -> None:
        if self._r.hexists(self._aliases, coll.name):
            raise Conflict(f"{coll.name!r} is an alias: pick another collection name")
        if not self._r.hsetnx(self._collections, coll.name, orjson.dumps(coll.to_json())):
            raise Conflict(f"collection {coll.name!r} already exists: pick another name")

    def get(self, name: str) -> ClusterCollection:
        raw = self._r.hget(self._collections, name)
        if raw is None:
            raise NotFound(f"collection {name!r} does not exist")
        return ClusterCollection.from_json(orjson.loads(raw))

    def resolve(self, name: str) -> ClusterCollection:
        """A collection by name or alias."""
        target = self._r.hget(self._aliases, name)
        return self.get(target.decode() if target is not None else name)

    def list(self) -> list[ClusterCollection]:
        rows = self._r.hgetall(self._collections)
        return sorted(
            (ClusterCollection.from_json(orjson.loads(v)) for v in rows.values()),
            key=lambda c: c.name,
        )

    def delete(self, name: str) -> None:
        if not self._r.hdel(self._collections, name):
            raise NotFound(f"collection {name!r} does not exist")
        self._r.delete(self._upgrades + name)

    def upgrade(self, name: str) -> UpgradeRecord | None:
        """The collection's latest upgrade, if it ever had one."""
        raw = self._r.get(self._upgrades + name)
        return UpgradeRecord(**orjson.loads(raw)) if raw is not None else None

    def update(self, name: str, change: Change) -> tuple[ClusterCollection, UpgradeRecord | None]:
        """Apply `change` to a collection and its latest upgrade in one Redis transaction
        (optimistic: WATCH, re-run `change` when another API node wrote in between), so a
        cutover flips the serving space and the upgrade's state together for every API node.
        `change` raises to refuse."""
        import redis

        def attempt(client: Any) -> tuple[ClusterCollection, UpgradeRecord | None]:
            with client.pipeline() as pipe:
                for _ in range(WATCH_RETRIES):
                    try:
                        pipe.watch(self._collections, self._upgrades + name)
                        raw = pipe.hget(self._collections, name)
                        if raw is None:
                            raise NotFound(f"collection {name!r} does not exist")
                        up_raw = pipe.get(self._upgrades + name)
                        up = UpgradeRecord(**orjson.loads(up_raw)) if up_raw is not None else None
                        coll, new_up = change(ClusterCollection.from_json(orjson.loads(raw)), up)
                        pipe.multi()
                        pipe.hset(self._collections, name, orjson.dumps(coll.to_json()))
                        if new_up is not None:
                            pipe.set(self._upgrades + name, orjson.dumps(asdict(new_up)))
                        pipe.execute()
                        return coll, new_up
                    except redis.WatchError:
                        continue
            raise Unavailable(f"the catalog entry of {name!r} kept changing under us: retry")

        return self._r.write(attempt)

    def set_alias(self, alias: str, target: str) -> None:
        self.get(target)
        if self._r.hexists(self._collections, alias):
            raise Conflict(f"{alias!r} is a collection: pick another alias name")
        self._r.hset(self._aliases, alias, target)

    def aliases(self) -> dict[str, str]:
        rows = self._r.hgetall(self._aliases)
        return {k.decode(): v.decode() for k, v in sorted(rows.items())}

    def delete_alias(self, alias: str) -> None:
        if not self._r.hdel(self._aliases, alias):
            raise NotFound(f"alias {alias!r} does not exist")

    def put_job(
        self, job_id: str, collection: str, topic: str, offsets: dict[int, int], documents: int,
        rejected: Sequence[dict[str, str]] = (),
    ) -> None:  # fmt: skip
        """`rejected`: the inputs of the submission that became no document, and why (as a
        single-node job keeps them)."""
        value: dict[str, Any] = {
            "collection": collection,
            "topic": topic,
            "offsets": offsets,
            "documents": documents,
            "created_at": time.time(),
        }
        if rejected:
            value["rejected"] = list(rejected)
        raw = orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        self._r.set(self._jobs + job_id, raw, ex=JOB_TTL_S)

    def get_job(self, job_id: str) -> dict[str, Any]:
        raw = self._r.get(self._jobs + job_id)
        if raw is None:
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        data: dict[str, Any] = orjson.loads(raw)
        data["offsets"] = {int(k): int(v) for k, v in data["offsets"].items()}
        return data
