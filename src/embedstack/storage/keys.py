"""API keys and the audit log: the access half of the store.

A key is `es_<prefix>_<secret>`: the prefix (12 hex characters) names the key and is shown in
listings and the audit log; the secret (32 random bytes, url-safe base64) is shown once, at
creation, and stored only as sha256(salt || secret) with a random 16-byte salt per key. A fast
salted hash is enough here, unlike for passwords: the secret carries 256 bits of entropy, so no
dictionary or brute force applies whatever the hash's speed, while a slow KDF (scrypt, pbkdf2)
would add tens of milliseconds of CPU to every request. Hashes are compared with
hmac.compare_digest.

A key belongs to one tenant (a namespace for collection and alias names), holds scopes (read <
write < admin, plus `metrics` for a scraper) and, optionally, grants to named collections of its
tenant (none: every collection of the tenant), and optional per-key rate limits.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from embedstack.errors import InvalidInput, NotFound

DEFAULT_TENANT = "default"
# a tenant's collections and aliases are stored as "<tenant>:<name>"; the default tenant's as
# "<name>" (so data from before tenants is the default tenant's). ':' is not allowed in a name.
TENANT_SEP = ":"
TENANT_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
SCOPES = ("read", "write", "admin", "metrics")
RANK = {"read": 1, "write": 2, "admin": 3}
KEY_RE = re.compile(r"^es_([0-9a-f]{12})_([A-Za-z0-9_-]{20,100})$")


@dataclass(frozen=True)
class KeyRecord:
    prefix: str
    tenant: str
    scopes: tuple[str, ...]
    collections: tuple[str, ...] | None  # None: every collection of the tenant
    rate_rps: float | None  # None: the server default
    rate_texts: float | None
    name: str | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def active(self, now: float | None = None) -> bool:
        now = time.time() if now is None else now
        if self.revoked_at is not None and self.revoked_at <= now:
            return False
        return self.expires_at is None or self.expires_at > now

    def public(self) -> dict[str, Any]:
        """What a listing shows: never the secret or its hash."""
        return {
            "prefix": self.prefix, "tenant": self.tenant, "scopes": list(self.scopes),
            "collections": list(self.collections) if self.collections is not None else None,
            "rate_rps": self.rate_rps, "rate_texts": self.rate_texts, "name": self.name,
            "created_at": self.created_at, "expires_at": self.expires_at,
            "revoked_at": self.revoked_at, "active": self.active(),
        }  # fmt: skip


@dataclass(frozen=True)
class AuditEntry:
    id: int
    at: float
    key_prefix: str | None
    tenant: str | None
    action: str
    collection: str | None
    status: int | None
    detail: dict[str, Any]

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id, "at": self.at, "key": self.key_prefix, "tenant": self.tenant,
            "action": self.action, "collection": self.collection, "status": self.status,
            "detail": self.detail,
        }  # fmt: skip


def new_secret() -> tuple[str, str, bytes]:
    """A new key's (prefix, secret, salt); the full key is f"es_{prefix}_{secret}"."""
    return secrets.token_hex(6), secrets.token_urlsafe(32), secrets.token_bytes(16)


def check_rates(*rates: float | None) -> None:
    for r in rates:
        if r is not None and not r > 0:
            raise InvalidInput(f"rate limit {r} is not valid: give a number above 0")


def hash_secret(salt: bytes, secret: str) -> bytes:
    return hashlib.sha256(salt + secret.encode()).digest()


def parse_key(key: str) -> tuple[str, str] | None:
    """(prefix, secret) of a well-formed key, else None."""
    m = KEY_RE.match(key.strip())
    return (m.group(1), m.group(2)) if m else None


def check_tenant(tenant: str) -> str:
    if not TENANT_RE.match(tenant):
        raise InvalidInput(
            f"tenant {tenant!r} is not valid: use 1-32 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    return tenant


class KeyBook(Protocol):
    """Where keys live: a store (KeysMixin) or a cluster's catalog (cluster/keys.py)."""

    def get_key(self, prefix: str) -> KeyRecord: ...

    def create_key(
        self, tenant: str, scopes: Sequence[str], collections: Sequence[str] | None,
        rate_rps: float | None, rate_texts: float | None, name: str | None,
    ) -> tuple[str, KeyRecord]: ...  # fmt: skip

    def revoke_key(self, prefix: str, at: float | None = None) -> KeyRecord: ...


def rotate(keys: KeyBook, prefix: str, grace_s: float = 0.0) -> tuple[str, KeyRecord]:
    """A new key with the same tenant, scopes, grants and limits as key `prefix`, which is
    revoked now or after `grace_s` seconds; NotFound when it is not active."""
    old = keys.get_key(prefix)
    if not old.active():
        raise NotFound(f"API key {prefix!r} is revoked or expired: create a new key instead")
    full, new = keys.create_key(
        old.tenant, old.scopes, old.collections, old.rate_rps, old.rate_texts, old.name
    )
    keys.revoke_key(prefix, time.time() + max(0.0, grace_s))
    return full, new


def check_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    unknown = sorted(set(scopes) - set(SCOPES))
    if unknown or not scopes:
        raise InvalidInput(f"scopes {unknown or '[]'} are not valid: use {', '.join(SCOPES)}")
    return tuple(s for s in SCOPES if s in scopes)


_KEY_COLS = (
    "prefix, tenant, scopes, collections, rate_rps, rate_texts, name, created_at, expires_at,"
    " revoked_at"
)


def _key(row: tuple[Any, ...]) -> KeyRecord:
    colls = orjson.loads(row[3]) if row[3] is not None else None
    return KeyRecord(row[0], row[1], tuple(orjson.loads(row[2])),
                     tuple(colls) if colls is not None else None, row[4], row[5], row[6], row[7],
                     row[8], row[9])  # fmt: skip


class KeysMixin:
    """Methods of `Store` over the api_keys and audit tables."""

    def _tx(self) -> AbstractContextManager[sqlite3.Connection]:
        raise NotImplementedError

    def _reader(self) -> sqlite3.Connection:
        raise NotImplementedError

    # -- keys -------------------------------------------------------------------------------
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
        prefix, secret, salt = new_secret()
        colls = orjson.dumps(sorted(set(collections))).decode() if collections is not None else None
        with self._tx() as c:
            c.execute(
                f"INSERT INTO api_keys({_KEY_COLS}, salt, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                (prefix, tenant, orjson.dumps(list(checked)).decode(), colls, rate_rps,
                 rate_texts, name, time.time(), None, None, salt, hash_secret(salt, secret)),
            )  # fmt: skip
        return f"es_{prefix}_{secret}", self.get_key(prefix)

    def get_key(self, prefix: str) -> KeyRecord:
        row = (
            self._reader()
            .execute(f"SELECT {_KEY_COLS} FROM api_keys WHERE prefix=?", (prefix,))
            .fetchone()
        )
        if row is None:
            raise NotFound(f"no API key with prefix {prefix!r}")
        return _key(row)

    def keys(self, tenant: str | None = None) -> list[KeyRecord]:
        sql = f"SELECT {_KEY_COLS} FROM api_keys"
        args: tuple[str, ...] = ()
        if tenant is not None:
            sql, args = sql + " WHERE tenant=?", (tenant,)
        return [_key(r) for r in self._reader().execute(sql + " ORDER BY created_at", args)]

    def has_keys(self) -> bool:
        return self._reader().execute("SELECT 1 FROM api_keys LIMIT 1").fetchone() is not None

    def verify_key(self, key: str) -> KeyRecord | None:
        """The record of an active key whose secret matches, else None."""
        parsed = parse_key(key)
        if parsed is None:
            return None
        prefix, secret = parsed
        row = (
            self._reader()
            .execute(f"SELECT {_KEY_COLS}, salt, hash FROM api_keys WHERE prefix=?", (prefix,))
            .fetchone()
        )
        if row is None:
            # the same work as a found key, so timing does not tell a known prefix
            hmac.compare_digest(hash_secret(b"\0" * 16, secret), b"\0" * 32)
            return None
        if not hmac.compare_digest(hash_secret(row[-2], secret), row[-1]):
            return None
        record = _key(row[:-2])
        return record if record.active() else None

    def revoke_key(self, prefix: str, at: float | None = None) -> KeyRecord:
        """Revoke now, or at `at` (a grace period after a rotation)."""
        when = time.time() if at is None else at
        with self._tx() as c:
            done = c.execute(
                "UPDATE api_keys SET revoked_at=? WHERE prefix=? AND"
                " (revoked_at IS NULL OR revoked_at > ?)",
                (when, prefix, when),
            )
            if (
                done.rowcount == 0
                and not c.execute("SELECT 1 FROM api_keys WHERE prefix=?", (prefix,)).fetchone()
            ):
                raise NotFound(f"no API key with prefix {prefix!r}")
        return self.get_key(prefix)

    def rotate_key(self, prefix: str, grace_s: float = 0.0) -> tuple[str, KeyRecord]:
        """A new key with the same tenant, scopes, grants and limits; the old one is revoked
        now or after `grace_s` seconds."""
        return rotate(self, prefix, grace_s)

    # -- audit ------------------------------------------------------------------------------
    def add_audit(
        self,
        key_prefix: str | None,
        tenant: str | None,
        action: str,
        collection: str | None = None,
        status: int | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT INTO audit(at, key_prefix, tenant, action, collection, status, detail)"
                " VALUES (?,?,?,?,?,?,?)",
                (time.time(), key_prefix, tenant, action, collection, status,
                 orjson.dumps(detail or {}).decode()),
            )  # fmt: skip

    def audit(
        self, tenant: str | None = None, limit: int = 100, before: int | None = None
    ) -> list[AuditEntry]:
        """Newest first."""
        where: list[str] = []
        args: list[Any] = []
        if tenant is not None:
            where.append("tenant=?")
            args.append(tenant)
        if before is not None:
            where.append("id<?")
            args.append(before)
        sql = "SELECT id, at, key_prefix, tenant, action, collection, status, detail FROM audit"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self._reader().execute(sql + " ORDER BY id DESC LIMIT ?", (*args, limit))
        return [
            AuditEntry(r[0], r[1], r[2], r[3], r[4], r[5], r[6], orjson.loads(r[7])) for r in rows
        ]
