"""Access control: the one authentication step every request passes, scopes, tenants, Host checks.

- `AccessGate` (ASGI middleware, outermost) refuses a Host (or browser Origin) outside the
  allow-list with 421/403 -- a DNS-rebinding defence that holds with or without auth -- then
  turns `Authorization: Bearer <key>` (or an `api-key` header) into a `Principal`: 401 when a
  route needs one and the key is missing, unknown, revoked or expired. It charges the key's
  request bucket (429 + Retry-After) and, after the answer, records write and admin actions in
  the audit log (serving/audit.py).
- Each route declares the scope it needs with one dependency (`reading`, `writing`,
  `administering`, `scraping`), which answers 403 for a key without it and hands the route an
  `Access`: the principal's view of collection names.
- A tenant is a namespace: its collections and aliases are stored as "<tenant>:<name>" (the
  `default` tenant's under their plain names), so a key resolves names only inside its tenant;
  a name with ':' is nobody's. Users see plain names: responses are mapped back with
  `display`, and error messages are scrubbed of the caller's own prefix.

Open without a key: /healthz, /readyz (which lists only the caller's indexes, none without a
key), /docs, /openapi.json and /dashboard (a static page; its data, /v1/metrics/history, needs
the `metrics` scope). /metrics carries every tenant's collection names in its labels,
so it needs a key of the default tenant with the `metrics` (or `admin`) scope.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from embedstack.config import Settings
from embedstack.errors import ConfigError, Forbidden, NotFound, Overloaded, Unauthorized
from embedstack.serving.audit import record_action
from embedstack.serving.http import JSON
from embedstack.serving.limits import RateLimiter
from embedstack.serving.services import Services
from embedstack.storage.keys import DEFAULT_TENANT, RANK, SCOPES, TENANT_SEP, KeyRecord
from embedstack.storage.store import CollectionRecord

log = logging.getLogger(__name__)

OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/openapi.json", "/dashboard"}
)
HOST_EXEMPT = frozenset({"/healthz"})  # liveness probes come with whatever Host they like
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
WILDCARDS = frozenset({"", "0.0.0.0", "::"})


# -- binding ------------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    h = host.strip().strip("[]").lower()
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def check_bind(settings: Settings) -> None:
    """ConfigError for a server that would listen on the network without authentication, or
    with half a TLS configuration."""
    if settings.insecure_no_auth and not is_loopback(settings.host):
        raise ConfigError(
            f"--insecure-no-auth is allowed only on a loopback address (127.0.0.1, ::1, "
            f"localhost), not {settings.host!r}: create a key with `embedstack keys create "
            "--scope admin` and serve with authentication"
        )
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("TLS needs both --tls-cert and --tls-key (PEM files)")
    for path in (settings.tls_cert, settings.tls_key):
        if path is not None and not path.is_file():
            raise ConfigError(f"TLS file {path} does not exist")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host names this server answers; None: any (allowed_hosts = ["*"])."""
    if "*" in settings.allowed_hosts:
        return None
    hosts = set(LOOPBACK_NAMES) | {host_of(h) for h in settings.allowed_hosts}
    if settings.host not in WILDCARDS:
        hosts.add(host_of(settings.host))
    return frozenset(hosts)


def host_of(value: str) -> str:
    """'Example.com:8080' -> 'example.com'; '[::1]:80' -> '::1'."""
    v = value.strip().lower()
    if v.startswith("["):
        return v[1 : v.index("]")] if "]" in v else v
    return v.rsplit(":", 1)[0] if v.count(":") == 1 else v


# -- who is asking ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Principal:
    tenant: str
    scopes: frozenset[str]
    collections: frozenset[str] | None = None  # None: every collection of the tenant
    key: str | None = None  # the key's prefix; None when authentication is off
    rate_rps: float | None = None
    rate_texts: float | None = None

    @classmethod
    def of(cls, record: KeyRecord) -> Principal:
        colls = frozenset(record.collections) if record.collections is not None else None
        return cls(record.tenant, frozenset(record.scopes), colls, record.prefix,
                   record.rate_rps, record.rate_texts)  # fmt: skip

    def may(self, scope: str) -> bool:
        if scope == "metrics":  # every tenant's collection names: the operator's tenant only
            return self.tenant == DEFAULT_TENANT and bool({"metrics", "admin"} & self.scopes)
        return any(RANK.get(s, 0) >= RANK[scope] for s in self.scopes)

    @property
    def _prefix(self) -> str:
        return "" if self.tenant == DEFAULT_TENANT else self.tenant + TENANT_SEP

    def qualify(self, name: str) -> str:
        """The stored name of this tenant's collection or alias `name`."""
        if TENANT_SEP in name:
            raise NotFound(f"collection {name!r} does not exist")
        return self._prefix + name

    def owns(self, stored: str) -> bool:
        if self.tenant == DEFAULT_TENANT:
            return TENANT_SEP not in stored
        return stored.startswith(self._prefix) and TENANT_SEP not in stored[len(self._prefix) :]

    def display(self, stored: str) -> str:
        if self._prefix and stored.startswith(self._prefix):
            return stored[len(self._prefix) :]
        return stored

    def granted(self, name: str) -> bool:
        return self.collections is None or name in self.collections

    def sees(self, stored: str) -> bool:
        """Whether a listing shows collection (or alias) `stored`: its tenant's, and granted."""
        return self.owns(stored) and self.granted(self.display(stored))

    def grant(self, name: str) -> None:
        """Forbidden unless this key may touch collection (or alias) `name` of its tenant."""
        if not self.granted(name):
            raise Forbidden(f"this API key has no grant for collection {name!r}")

    def check_resolved(self, name: str, stored: str) -> None:
        """After `qualify(name)` resolved to collection `stored`: NotFound unless it is this
        tenant's (an alias can only point inside its tenant), Forbidden without a grant for
        either name."""
        if not self.owns(stored):
            raise NotFound(f"collection {name!r} does not exist")
        if not (self.granted(name) or self.granted(self.display(stored))):
            raise Forbidden(f"this API key has no grant for collection {name!r}")

    def charge(self, limiter: RateLimiter, kind: str, n: float) -> None:
        """Charge `n` requests or texts to this key's bucket (Overloaded when it is empty);
        nothing without a key (authentication off)."""
        if self.key is not None and n > 0:
            rate = self.rate_rps if kind == "requests" else self.rate_texts
            limiter.charge(self.key, kind, n, rate)

    def scrub(self, message: str) -> str:
        """An error message with this tenant's stored-name prefix taken out."""
        if not self._prefix:
            return message
        return re.sub(rf"(?<![\w.-]){re.escape(self._prefix)}", "", message)


INSECURE = Principal(DEFAULT_TENANT, frozenset(SCOPES))


def principal_of(request: Request) -> Principal | None:
    found: Principal | None = getattr(request.state, "principal", None)
    return found


def scrub(request: Request, message: str) -> str:
    p = principal_of(request)
    return p.scrub(message) if p is not None else message


# -- what a route may do ------------------------------------------------------------------------
@dataclass
class Access:
    """A route's view of the caller: resolve names in its tenant, check grants, charge texts,
    note what the audit log should say."""

    principal: Principal
    services: Services
    limiter: RateLimiter
    scope: str
    detail: dict[str, Any] = field(default_factory=dict)

    @property
    def tenant(self) -> str:
        return self.principal.tenant

    def qualify(self, name: str) -> str:
        return self.principal.qualify(name)

    def display(self, stored: str) -> str:
        return self.principal.display(stored)

    def owns(self, stored: str) -> bool:
        return self.principal.sees(stored)

    def grant(self, name: str) -> None:
        self.principal.grant(name)

    def resolve_sync(self, name: str) -> CollectionRecord:
        """This tenant's collection `name` (or the one its alias `name` points to)."""
        record = self.services.collections.resolve(self.qualify(name))
        self.principal.check_resolved(name, record.name)
        return record

    async def resolve(self, name: str) -> CollectionRecord:
        return await asyncio.to_thread(self.resolve_sync, name)

    def charge_texts(self, n: int) -> None:
        self.principal.charge(self.limiter, "texts", n)

    def note(self, **detail: Any) -> None:
        """Counts and names for this request's audit entry (never text, vectors or secrets)."""
        self.detail.update(detail)


def require(scope: str) -> Callable[[Request], Awaitable[Access]]:
    async def dependency(request: Request) -> Access:  # async: no thread-pool hop per request
        principal = principal_of(request)
        if principal is None:  # AccessGate lets no such request through to a route
            raise Unauthorized("missing API key: send 'Authorization: Bearer es_...'")
        app = request.app
        access = Access(principal, app.state.services, app.state.limiter, scope)
        request.state.access = access
        if not principal.may(scope):
            raise Forbidden(
                f"this API key (tenant {principal.tenant!r}, scopes "
                f"{', '.join(sorted(principal.scopes))}) lacks the {scope!r} scope this route needs"
            )
        return access

    dependency.__name__ = f"require_{scope}"
    return dependency


reading = require("read")
writing = require("write")
administering = require("admin")
scraping = require("metrics")
SCOPE_DEPENDENCIES = {
    reading: "read", writing: "write", administering: "admin", scraping: "metrics"
}  # fmt: skip


# -- the gate -----------------------------------------------------------------------------------
def presented_key(headers: Headers) -> str | None:
    auth = headers.get("authorization")
    if auth:
        kind, _, value = auth.partition(" ")
        return value.strip() if kind.lower() == "bearer" else ""
    return headers.get("api-key") or headers.get("x-api-key")


class AccessGate:
    """Pure ASGI middleware: Host allow-list, authentication, request rate, audit."""

    def __init__(self, app: ASGIApp, services: Services, limiter: RateLimiter) -> None:
        self.app = app
        self.services = services
        self.limiter = limiter
        self.hosts = allowed_hosts(services.settings)
        self.auth = not services.settings.insecure_no_auth

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        headers = Headers(scope=scope)
        if await refuse_host(self.hosts, scope, receive, send):
            return
        principal: Principal | None = INSECURE if not self.auth else None
        key = presented_key(headers) if self.auth else None
        if key:
            record = await asyncio.to_thread(self.services.store.verify_key, key)
            principal = Principal.of(record) if record is not None else None
        if principal is None and path not in OPEN_PATHS:
            await refuse_unauthorized(key, scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["principal"] = principal
        if (
            principal is not None
            and path not in OPEN_PATHS
            and await refuse_over_rate(principal, self.limiter, scope, receive, send)
        ):
            return

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":  # audited before the answer goes out
                await self._audit(scope, state, message["status"])
            await send(message)

        await self.app(scope, receive, send_wrapper)

    async def _audit(self, scope: Scope, state: dict[str, Any], status: int) -> None:
        access = state.get("access")
        if isinstance(access, Access):
            p = access.principal
            await record_action(self.services.store, scope, p.key, p.tenant, access.scope,
                                status, access.detail)  # fmt: skip


async def refuse_host(
    hosts: frozenset[str] | None, scope: Scope, receive: Receive, send: Send
) -> bool:
    """Answer 421 for a Host outside the allow-list (403 for a browser Origin outside it) and
    return True; False when the request may go on."""
    path: str = scope["path"]
    if hosts is None or path in HOST_EXEMPT:
        return False
    headers = Headers(scope=scope)
    host = host_of(headers.get("host", ""))
    if host not in hosts:
        await refuse(scope, receive, send, 421, "MisdirectedRequest",
                      f"this server does not answer for Host {host!r}: use localhost, or "
                      "add the name to EMBEDSTACK_ALLOWED_HOSTS")  # fmt: skip
        return True
    origin = headers.get("origin")
    if origin is not None and host_of(urlsplit(origin).netloc) not in hosts:
        await refuse(scope, receive, send, 403, "Forbidden",
                      f"cross-origin request from {origin!r} refused: add its host to "
                      "EMBEDSTACK_ALLOWED_HOSTS to allow it")  # fmt: skip
        return True
    return False


async def refuse_over_rate(
    principal: Principal, limiter: RateLimiter, scope: Scope, receive: Receive, send: Send
) -> bool:
    """Charge one request to the key; when its bucket is empty answer 429 + Retry-After and
    return True."""
    try:
        principal.charge(limiter, "requests", 1)
    except Overloaded as exc:
        retry = str(max(1, round(exc.retry_after)))
        await refuse(scope, receive, send, 429, "Overloaded", exc.message, {"Retry-After": retry})
        return True
    return False


async def refuse_unauthorized(key: str | None, scope: Scope, receive: Receive, send: Send) -> None:
    """401 for a request without a (valid) key."""
    why = (
        "invalid API key: it is unknown, revoked or expired (send 'Authorization: Bearer es_...')"
        if key is not None
        else "missing API key: send 'Authorization: Bearer es_...' (create one with "
        "`embedstack keys create`)"
    )
    await refuse(scope, receive, send, 401, "Unauthorized", why, {"WWW-Authenticate": "Bearer"})


async def refuse(
    scope: Scope, receive: Receive, send: Send, status: int, kind: str, message: str,
    headers: dict[str, str] | None = None,
) -> None:  # fmt: skip
    body = {"error": {"type": kind, "message": message}}
    await JSON(body, status_code=status, headers=headers)(scope, receive, send)
