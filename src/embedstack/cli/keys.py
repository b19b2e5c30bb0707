"""`embedstack keys create|list|rotate|revoke|audit`: API keys and the audit log, on the data dir.

These work on the store directly (like `embedstack ingest --data-dir`), for every tenant, with or
without a running server: a server checks keys in the store on every request, so a revoked key
is refused at once. An admin key can do the same over HTTP for its own tenant (/v1/keys).
The full key is printed once, on stdout, at create and rotate; the store keeps a salted hash.
With --catalog redis://HOST:PORT/DB, create, list, revoke and audit work on a cluster's keys and
audit log (in its Redis catalog, shared by every API node of `embedstack serve --cluster`)
instead.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import click
import orjson

from embedstack.cli.common import Command, Group, config_option, data_dir_option, load_settings
from embedstack.storage.keys import DEFAULT_TENANT, SCOPES
from embedstack.storage.store import Store

if TYPE_CHECKING:
    from embedstack.cluster.catalog import RedisCatalog
    from embedstack.cluster.keys import RedisKeys
    from embedstack.cluster.observed import ClusterAudit


def _store(config: Path | None, data_dir: Path | None) -> Store:
    settings = load_settings(config, data_dir=data_dir)
    return Store(settings.data_dir / "store.db")


def _cluster_keys(catalog: str) -> RedisKeys:
    return _catalog(catalog).keys()


def _cluster_audit(catalog: str, config: Path | None) -> ClusterAudit:
    from embedstack.cluster.observed import ClusterAudit

    found = _catalog(catalog)
    size = load_settings(config).cluster_audit_max_entries
    return ClusterAudit(found.client(), found.prefix, size)


def _catalog(catalog: str) -> RedisCatalog:
    from embedstack.cluster.catalog import RedisCatalog

    return RedisCatalog.from_url(catalog)


catalog_option = click.option(
    "--catalog", default=None, metavar="URL",
    help="A cluster's catalog (redis://HOST:PORT/DB, or redis+sentinel://HOST:PORT,...,"
    "HOST:PORT/MASTER/DB for a replicated one): its keys instead of the data dir's.",
)  # fmt: skip


def _when(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t)) if t else "-"


@click.group(cls=Group)
def keys() -> None:
    """API keys (scopes read < write < admin, and metrics) per tenant, and the audit log."""


@keys.command(cls=Command)
@data_dir_option
@click.option("--tenant", default=DEFAULT_TENANT, show_default=True,
              help="The namespace the key's collection and alias names resolve in.")  # fmt: skip
@click.option("--scope", "scopes", multiple=True, type=click.Choice(SCOPES), default=["read"],
              show_default=True, help="read, write (implies read), admin (implies write; "
              "collections, aliases, upgrades, keys), metrics (GET /metrics). "
              "Repeatable.")  # fmt: skip
@click.option("--collection", "collections", multiple=True,
              help="Grant only this collection (or alias) of the tenant. Repeatable; none: "
              "every collection of the tenant.")  # fmt: skip
@click.option("--rps", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Requests per second for this key (default: the server's).")  # fmt: skip
@click.option("--texts-per-s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Texts (documents, inputs, queries) per second (default: the "
              "server's).")  # fmt: skip
@click.option("--name", default=None, help="A note: who or what uses the key.")
@catalog_option
@config_option
def create(
    data_dir: Path | None, tenant: str, scopes: tuple[str, ...], collections: tuple[str, ...],
    rps: float | None, texts_per_s: float | None, name: str | None, catalog: str | None,
    config: Path | None,
) -> None:  # fmt: skip
    """Create a key and print it (once: only its hash is stored)."""
    if catalog is not None:
        full, record = _cluster_keys(catalog).create_key(
            tenant, scopes, collections or None, rps, texts_per_s, name
        )
        _cluster_audit(catalog, config).add_audit(None, tenant, "cli keys create", detail={
            "key": record.prefix, "scopes": list(record.scopes)})  # fmt: skip
    else:
        store = _store(config, data_dir)
        try:
            full, record = store.create_key(
                tenant, scopes, collections or None, rps, texts_per_s, name
            )
            store.add_audit(None, tenant, "cli keys create", detail={"key": record.prefix,
                            "scopes": list(record.scopes)})  # fmt: skip
        finally:
            store.close()
    click.echo(
        f"created key {record.prefix} (tenant {record.tenant}, scopes "
        f"{','.join(record.scopes)}); it is shown only now:",
        err=True,
    )
    click.echo(full)


@keys.command("list", cls=Command)
@data_dir_option
@click.option("--tenant", default=None, help="Only this tenant's keys.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per key.")
@catalog_option
@config_option
def list_(
    data_dir: Path | None, tenant: str | None, as_json: bool, catalog: str | None,
    config: Path | None,
) -> None:  # fmt: skip
    """List keys by prefix (never the secret)."""
    if catalog is not None:
        records = _cluster_keys(catalog).keys(tenant)
    else:
        store = _store(config, data_dir)
        try:
            records = store.keys(tenant)
        finally:
            store.close()
    for r in records:
        if as_json:
            click.echo(orjson.dumps(r.public()).decode())
            continue
        grants = ",".join(r.collections) if r.collections is not None else "*"
        state = "active" if r.active() else f"revoked {_when(r.revoked_at)}"
        click.echo(f"{r.prefix}  {r.tenant:<12} {','.join(r.scopes):<18} {grants:<20} "
                   f"created {_when(r.created_at)}  {state}  {r.name or ''}".rstrip())  # fmt: skip


@keys.command(cls=Command)
@click.argument("prefix")
@data_dir_option
@click.option("--grace-s", type=click.FloatRange(min=0), default=0.0, show_default=True,
              help="Seconds the old key keeps working, to roll the new one out.")  # fmt: skip
@config_option
def rotate(prefix: str, data_dir: Path | None, grace_s: float, config: Path | None) -> None:
    """Replace a key by a new one with the same tenant, scopes, grants and limits; print it."""
    store = _store(config, data_dir)
    try:
        full, record = store.rotate_key(prefix, grace_s)
        detail = {"key": prefix, "new_key": record.prefix, "grace_s": grace_s}
        store.add_audit(None, record.tenant, "cli keys rotate", detail=detail)
    finally:
        store.close()
    click.echo(f"key {prefix} replaced by {record.prefix}; it is shown only now:", err=True)
    click.echo(full)


@keys.command(cls=Command)
@click.argument("prefix")
@data_dir_option
@catalog_option
@config_option
def revoke(prefix: str, data_dir: Path | None, catalog: str | None, config: Path | None) -> None:
    """Revoke a key now: a running server refuses it from its next request."""
    if catalog is not None:
        record = _cluster_keys(catalog).revoke_key(prefix)
        _cluster_audit(catalog, config).add_audit(
            None, record.tenant, "cli keys revoke", detail={"key": prefix}
        )
    else:
        store = _store(config, data_dir)
        try:
            record = store.revoke_key(prefix)
            store.add_audit(None, record.tenant, "cli keys revoke", detail={"key": prefix})
        finally:
            store.close()
    click.echo(f"revoked key {prefix} (tenant {record.tenant})")


@keys.command(cls=Command)
@data_dir_option
@click.option("--tenant", default=None, help="Only this tenant's entries.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@catalog_option
@config_option
def audit(
    data_dir: Path | None, tenant: str | None, limit: int, catalog: str | None,
    config: Path | None,
) -> None:  # fmt: skip
    """The audit log, newest first: who (key prefix, tenant), what, when, with what status."""
    if catalog is not None:
        entries = _cluster_audit(catalog, config).audit(tenant, limit)
    else:
        store = _store(config, data_dir)
        try:
            entries = store.audit(tenant, limit)
        finally:
            store.close()
    for e in entries:
        click.echo(orjson.dumps({**e.public(), "at": _when(e.at)}).decode())
