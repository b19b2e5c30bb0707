"""The cluster catalog in Redis: collections (config, space, topic, shard layout), aliases and
jobs, shared by every API node. Redis is the coordination store (durable with an fsync-per-write
append-only file, see infra/local.py); no API node holds catalog state of its own."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import orjson

from embedstack.errors import Conflict, NotFound
from embedstack.types import CollectionConfig

JOB_TTL_S = 7 * 24 * 3600


@dataclass(frozen=True)
class ClusterCollection:
    name: str
    config: CollectionConfig
    space_id: str
    created_at: float
    topic: str  # the log topic: unique per incarnation, so a re-created name starts empty
    shards: int
    replicas: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "config": self.config.to_json(),
            "space_id": self.space_id,
            "created_at": self.created_at,
            "topic": self.topic,
            "shards": self.shards,
            "replicas": self.replicas,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClusterCollection:
        return cls(
            str(data["name"]),
            CollectionConfig.from_json(data["config"]),
            str(data["space_id"]),
            float(data["created_at"]),
            str(data["topic"]),
            int(data["shards"]),
            int(data["replicas"]),
        )


class RedisCatalog:
    def __init__(self, client: Any, prefix: str = "embedstack") -> None:
        self._r = client
        self._collections = f"{prefix}:collections"
        self._aliases = f"{prefix}:aliases"
        self._jobs = f"{prefix}:job:"

    @classmethod
    def from_url(cls, url: str) -> RedisCatalog:
        import redis

        return cls(redis.Redis.from_url(url, socket_timeout=5.0))

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

    def set_alias(self, alias: str, target: str) -> None:
        self.get(target)
        if self._r.hexists(self._collections, alias):
            raise Conflict(f"{alias!r} is a collection: pick another alias name")
        self._r.hset(self._aliases, alias, target)

    def put_job(
        self, job_id: str, collection: str, topic: str, offsets: dict[int, int], documents: int
    ) -> None:
        value = {
            "collection": collection,
            "topic": topic,
            "offsets": offsets,
            "documents": documents,
            "created_at": time.time(),
        }
        self._r.set(self._jobs + job_id, orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS))
        self._r.expire(self._jobs + job_id, JOB_TTL_S)

    def get_job(self, job_id: str) -> dict[str, Any]:
        raw = self._r.get(self._jobs + job_id)
        if raw is None:
            raise NotFound(f"job {job_id!r} does not exist (or expired)")
        data: dict[str, Any] = orjson.loads(raw)
        data["offsets"] = {int(k): int(v) for k, v in data["offsets"].items()}
        return data
