"""API keys on a cluster API node: the single-node gate (serving/auth.py: Host allow-list, a
Bearer key turned into a Principal, 401/403 in the API's error shape, the key's request bucket
with 429 + Retry-After) with the keys in the shared Redis catalog (cluster/keys.py), so every
API node accepts and revokes the same keys.

A route's scope follows its method and path, as single node declares them: reads (GET, a
query) need `read`, document writes `write`, everything else (collections, aliases, upgrades,
keys) `admin`. Open without a key: the single-node open paths (/healthz, /readyz, /docs, ...).
Routes see the caller as a `ClusterAccess`: collection and alias names resolve in the key's
tenant (stored as "<tenant>:<name>" in the catalog, as on single node), grants are checked and
texts charged by the single-node Principal. The audit log: serving/cluster_obs.py writes an
entry per write or admin request and per 403 (routes note counts and names with `note`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from fastapi import APIRouter, Depends, Request
from starlette.datastructures import Headers
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from embedstack.cluster.catalog import ClusterCollection, RedisCatalog
from embedstack.cluster.keys import RedisKeys
from embedstack.config import Settings
from embedstack.errors import InvalidInput, NotFound
from embedstack.registry.collections import NAME_RE
from embedstack.serving.audit import notes_of
from embedstack.serving.auth import (
    INSECURE,
    OPEN_PATHS,
    Principal,
    allowed_hosts,
    presented_key,
    principal_of,
    refuse,
    refuse_host,
    refuse_over_rate,
    refuse_unauthorized,
)
from embedstack.serving.http import JSON
from embedstack.serving.limits import RateLimiter
from embedstack.serving.responses import (
    AliasesOut,
    AliasOut,
    DeletedOut,
    KeyCreatedOut,
    KeyOut,
    KeysOut,
)
from embedstack.serving.routes.keys import KeyIn, RotateIn, covers
from embedstack.serving.schemas import AliasIn


def scope_for(method: str, path: str) -> str:
    """The scope a cluster route needs (the one single node declares for it)."""
    if path.startswith(("/v1/keys", "/v1/audit")):
        return "admin"
    if path in ("/metrics", "/v1/metrics/history"):
        return "metrics"
    if method in ("GET", "HEAD") or (method == "POST" and path.endswith("/query")):
        return "read"
    if method == "POST" and path in ("/v1/embeddings", "/v1/feedback"):
        return "read"
    if "/documents" in path or path.endswith(("/vectors", "/records")):
        return "write"
    return "admin"


class Named(Protocol):
    @property
    def name(self) -> str: ...


C = TypeVar("C", bound=Named, covariant=True)


class Resolver(Protocol[C]):
    def resolve(self, name: str) -> C: ...


@dataclass(frozen=True)
class TenantAccess(Generic[C]):
    """A route's view of the caller over a shared catalog of collections `C` (single node's
    Access): names resolve in the key's tenant, grants are checked, texts charged."""

    principal: Principal
    catalog: Resolver[C]
    limiter: RateLimiter
    detail: dict[str, Any] = field(default_factory=dict)  # the request's audit notes

    def resolve(self, name: str) -> C:
        """This tenant's collection `name` (or the one its alias `name` points to)."""
        coll = self.catalog.resolve(self.principal.qualify(name))
        self.principal.check_resolved(name, coll.name)
        return coll

    def charge_texts(self, n: int) -> None:
        self.principal.charge(self.limiter, "texts", n)

    def note(self, **detail: Any) -> None:
        """Counts and names for this request's audit entry (never text, vectors or secrets)."""
        self.detail.update(detail)


class ClusterAccess(TenantAccess[ClusterCollection]):
    """A cluster route's view of the caller (over the cluster catalog)."""


def access_of(catalog: RedisCatalog, limiter: RateLimiter) -> Callable[[Request], ClusterAccess]:
    """The dependency that hands a route its ClusterAccess (the gate set the principal)."""

    def dependency(request: Request) -> ClusterAccess:
        principal = principal_of(request) or INSECURE
        return ClusterAccess(principal, catalog, limiter, notes_of(request.scope))

    return dependency


class ClusterGate:
    """Pure ASGI middleware, outermost: Host allow-list, then the key, its scope and its
    request rate."""

    def __init__(
        self, app: ASGIApp, keys: RedisKeys, settings: Settings, limiter: RateLimiter
    ) -> None:
        self.app = app
        self.keys = keys
        self.limiter = limiter
        self.hosts = allowed_hosts(settings)
        self.auth = not settings.insecure_no_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if await refuse_host(self.hosts, scope, receive, send):
            return
        path: str = scope["path"]
        principal: Principal | None = INSECURE if not self.auth else None
        key = presented_key(Headers(scope=scope)) if self.auth else None
        if key:
            record = await asyncio.to_thread(self.keys.verify_key, key)
            principal = Principal.of(record) if record is not None else None
        scope.setdefault("state", {})["principal"] = principal  # also for a refusal's audit
        if path not in OPEN_PATHS:
            if principal is None:
                await refuse_unauthorized(key, scope, receive, send)
                return
            needed = scope_for(scope["method"], path)
            if not principal.may(needed):
                await refuse(scope, receive, send, 403, "Forbidden",
                             f"this API key (scopes {', '.join(sorted(principal.scopes))}) lacks "
                             f"the {needed!r} scope this route needs")  # fmt: skip
                return
            if await refuse_over_rate(principal, self.limiter, scope, receive, send):
                return
        await self.app(scope, receive, send)


def key_routes(keys: RedisKeys) -> APIRouter:
    """/v1/keys on an API node (admin scope, checked by the gate): create, list, revoke."""
    api = APIRouter()

    @api.post("/v1/keys", status_code=201, response_model=KeyCreatedOut)
    async def create_key(body: KeyIn, request: Request) -> Response:
        principal = principal_of(request) or INSECURE
        covers(principal, body.scopes, body.collections)
        full, record = await asyncio.to_thread(
            keys.create_key, principal.tenant, body.scopes, body.collections, body.rate_rps,
            body.rate_texts, body.name,
        )  # fmt: skip
        notes_of(request.scope).update(key=record.prefix, scopes=list(record.scopes))
        return JSON({**record.public(), "key": full}, status_code=201)

    @api.get("/v1/keys", response_model=KeysOut)
    async def list_keys(request: Request) -> Response:
        """The keys of the caller's tenant."""
        tenant = (principal_of(request) or INSECURE).tenant
        return JSON({"keys": [r.public() for r in await asyncio.to_thread(keys.keys, tenant)]})

    async def own(request: Request, prefix: str) -> None:
        """NotFound for another tenant's key; Forbidden for one holding more than the caller."""
        record = await asyncio.to_thread(keys.get_key, prefix)
        principal = principal_of(request) or INSECURE
        if record.tenant != principal.tenant:
            raise NotFound(f"no API key with prefix {prefix!r}")
        held = list(record.collections) if record.collections is not None else None
        covers(principal, list(record.scopes), held)

    @api.post("/v1/keys/{prefix}/rotate", status_code=201, response_model=KeyCreatedOut)
    async def rotate_key(prefix: str, request: Request, body: RotateIn | None = None) -> Response:
        """A new key with the same tenant, scopes, grants and limits; the old one is revoked
        now or after `grace_s`."""
        await own(request, prefix)
        grace = (body or RotateIn()).grace_s
        full, record = await asyncio.to_thread(keys.rotate_key, prefix, grace)
        notes_of(request.scope).update(key=prefix, new_key=record.prefix, grace_s=grace)
        return JSON({**record.public(), "key": full}, status_code=201)

    @api.delete("/v1/keys/{prefix}", response_model=KeyOut)
    async def revoke_key(prefix: str, request: Request) -> Response:
        await own(request, prefix)
        notes_of(request.scope).update(key=prefix)
        return JSON((await asyncio.to_thread(keys.revoke_key, prefix)).public())

    return api


class Aliases(Protocol):
    """Where a cluster's or a federation's aliases live (the shared catalog)."""

    def set_alias(self, alias: str, target: str) -> None: ...

    def aliases(self) -> dict[str, str]: ...

    def delete_alias(self, alias: str) -> None: ...


def alias_routes(names: Aliases, access_of: Callable[..., TenantAccess[Any]]) -> APIRouter:
    """Set, list and delete aliases in the shared catalog (one write: every API node sees it at
    once), each in the caller's tenant, as single node's alias routes."""
    api = APIRouter()
    caller = Depends(access_of)

    @api.post("/v1/aliases", response_model=AliasOut)
    async def set_alias(body: AliasIn, access: TenantAccess[Any] = caller) -> Response:
        if not NAME_RE.match(body.alias):
            raise InvalidInput(
                f"alias {body.alias!r} is not valid: use the rules of collection names"
            )
        p = access.principal
        p.grant(body.alias)
        p.grant(body.collection)
        alias, target = p.qualify(body.alias), p.qualify(body.collection)
        await asyncio.to_thread(names.set_alias, alias, target)
        return JSON({"alias": body.alias, "collection": body.collection})

    @api.get("/v1/aliases", response_model=AliasesOut)
    async def list_aliases(access: TenantAccess[Any] = caller) -> Response:
        p = access.principal
        found = await asyncio.to_thread(names.aliases)
        shown = {p.display(a): p.display(c) for a, c in found.items() if p.sees(a) and p.sees(c)}
        return JSON({"aliases": shown})

    @api.delete("/v1/aliases/{alias}", response_model=DeletedOut)
    async def delete_alias(alias: str, access: TenantAccess[Any] = caller) -> Response:
        access.principal.grant(alias)
        await asyncio.to_thread(names.delete_alias, access.principal.qualify(alias))
        return JSON({"deleted": alias})

    return api
