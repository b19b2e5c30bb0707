"""The audit log's serving side: one entry per write or admin request (and per refused one).

An entry says who (key prefix and tenant; never the key), what (method and route template, the
collection name from the path or the route's note, counts) and when, with the answer's status.
Document text, vectors, metadata and key material never reach it: the routes note only counts
and names (Access.note), and the request body is never read here.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Protocol

from starlette.types import Scope

log = logging.getLogger(__name__)

AUDITED_SCOPES = frozenset({"write", "admin"})
NOTES = "audit_notes"  # the request state's entry where a cluster route notes counts and names


class AuditLog(Protocol):
    """Where entries go: the store (single node) or the catalog's Redis (cluster)."""

    def add_audit(
        self, key_prefix: str | None, tenant: str, action: str, collection: str | None = None,
        status: int | None = None, detail: dict[str, Any] | None = None,
    ) -> Any: ...  # fmt: skip


def notes_of(scope: Scope) -> dict[str, Any]:
    """The counts and names a route noted for this request's entry (a cluster API node's;
    single node's routes note on their Access)."""
    notes: dict[str, Any] = scope.setdefault("state", {}).setdefault(NOTES, {})
    return notes


async def record_action(
    store: AuditLog, scope: Scope, key: str | None, tenant: str, needed: str, status: int,
    detail: dict[str, Any],
) -> None:  # fmt: skip
    """Append the entry for one request, if it is a write or admin action or was refused."""
    if needed not in AUDITED_SCOPES and status != 403:
        return
    route = scope.get("route")
    action = f"{scope['method']} {getattr(route, 'path', scope['path'])}"
    extra = dict(detail)
    collection = extra.pop("collection", None) or scope.get("path_params", {}).get("name")
    try:
        await asyncio.to_thread(
            store.add_audit, key, tenant, action, collection, status, extra or None
        )
    except Exception:  # the answer is already sent; losing the entry must be visible
        log.exception("could not write the audit entry for %s (status %d)", action, status)
