"""API keys of a cluster, in the Redis catalog, so every API node verifies the same keys.

The single-node key format and hashing (storage/keys.py: `es_<prefix>_<secret>`, only a salted
sha256 of the secret stored, compared in constant time) and scopes (read < write < admin, plus
metrics), tenant (a namespace of collection and alias names), per-collection grants and per-key
rate limits, checked as on single node (serving/auth.py Principal); the rate buckets are each
API node's own, as a single node's are its own (N API nodes admit up to N times a key's rate)."""

from __future__ import annotations

import hmac
import time
from collections.abc import Sequence
from dataclasses import asdict, replace
from typing import Any

import orjson

from embedstack.errors import NotFound
from embedstack.storage.keys import (
    DEFAULT_TENANT,
    KeyRecord,
    check_rates,
    check_scopes,
    check_tenant,
    hash_secret,
    new_secret,
    parse_key,
    rotate,
)


class RedisKeys:
    def __init__(self, client: Any, prefix: str = "embedstack") -> None:
        self._r = client
        self._keys = f"{prefix}:keys"  # hash: key prefix -> record, salt and hash

    @classmethod
    def from_url(cls, url: str) -> RedisKeys:
        from embedstack.cluster.coordination import catalog_client

        return cls(catalog_client(url))

    def create_key(
        self,
        tenant: str = DEFAULT_TENANT,
        scopes: Sequence[str] = ("read",),
        collections: Sequence[str] | None = None,
        rate_rps: float | None = None,
        rate_texts: float | None = None,
        name: str | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: (the full key, shown only now; its record)."""
        check_tenant(tenant)
        checked = check_scopes(scopes)
        check_rates(rate_rps, rate_texts)
        grants = tuple(sorted(set(collections))) if collections is not None else None
        prefix, secret, salt = new_secret()
        record = KeyRecord(
            prefix, tenant, checked, grants, rate_rps, rate_texts, name, time.time(), None, None
        )
        entry = {
            "record": asdict(record),
            "salt": salt.hex(),
            "hash": hash_secret(salt, secret).hex(),
        }
        self._r.hset(self._keys, prefix, orjson.dumps(entry))
        return f"es_{prefix}_{secret}", record

    def _entry(self, prefix: str) -> dict[str, Any] | None:
        raw = self._r.hget(self._keys, prefix)
        return orjson.loads(raw) if raw is not None else None

    def get_key(self, prefix: str) -> KeyRecord:
        entry = self._entry(prefix)
        if entry is None:
            raise NotFound(f"no API key with prefix {prefix!r}")
        return _record(entry)

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        found = [_record(orjson.loads(v)) for v in self._r.hgetall(self._keys).values()]
        found = [k for k in found if tenant is None or k.tenant == tenant]
        return sorted(found, key=lambda k: k.created_at)

    def has_keys(self) -> bool:
        return bool(self._r.hlen(self._keys))

    def verify_key(self, key: str) -> KeyRecord | None:
        """The record of an active key whose secret matches, else None."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        prefix, secret = parsed
        entry = self._entry(prefix)
        if entry is None:
            hmac.compare_digest(hash_secret(b"\0" * 16, secret), b"\0" * 32)  # same work
            return None
        expected = bytes.fromhex(entry["hash"])
        if not hmac.compare_digest(hash_secret(bytes.fromhex(entry["salt"]), secret), expected):
            return None
        record = _record(entry)
        return record if record.active() else None

    def revoke_key(self, prefix: str, at: float | None = None) -> KeyRecord:
        """Revoke now, or at `at` (a grace period after a rotation)."""
        when = time.time() if at is None else at
        entry = self._entry(prefix)
        if entry is None:
            raise NotFound(f"no API key with prefix {prefix!r}")
        record = _record(entry)
        if record.revoked_at is None or record.revoked_at > when:
            record = replace(record, revoked_at=when)
            entry["record"] = asdict(record)
            self._r.hset(self._keys, prefix, orjson.dumps(entry))
        return record

    def rotate_key(self, prefix: str, grace_s: float = 0.0) -> tuple[str, KeyRecord]:
        """As single node: a new key like `prefix`, which is revoked now or after `grace_s`."""
        return rotate(self, prefix, grace_s)


def _record(entry: dict[str, Any]) -> KeyRecord:
    r = dict(entry["record"])
    r["scopes"] = tuple(r["scopes"])
    if r["collections"] is not None:
        r["collections"] = tuple(r["collections"])
    return KeyRecord(**r)
