"""Access control without a server: key storage, principals and names, limits, binding rules."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from click.testing import CliRunner
from fastapi.routing import APIRoute

from embedstack.cli import build_cli
from embedstack.config import Settings
from embedstack.errors import ConfigError, InvalidInput, NotFound, Overloaded
from embedstack.obs.metrics import Metrics
from embedstack.serving.app import create_app
from embedstack.serving.auth import (
    OPEN_PATHS,
    SCOPE_DEPENDENCIES,
    Principal,
    allowed_hosts,
    check_bind,
    host_of,
)
from embedstack.serving.limits import RateLimiter, check_filter
from embedstack.storage.store import Store


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store.db")


def test_keys_are_stored_only_as_salted_hashes_and_verified(store: Store) -> None:
    full, record = store.create_key("acme", ["write"], ["docs"], rate_rps=5, name="ingest")
    prefix, secret = full.split("_", 2)[1:]
    assert full.startswith("es_") and prefix == record.prefix and len(secret) >= 40
    store.close()
    raw = Path(store.path).read_bytes() + Path(f"{store.path}-wal").read_bytes()
    assert secret.encode() not in raw and full.encode() not in raw
    again = Store(store.path)
    found = again.verify_key(full)
    assert found is not None and found.tenant == "acme" and found.scopes == ("write",)
    assert found.collections == ("docs",) and found.rate_rps == 5
    assert again.verify_key(full[:-1] + ("A" if full[-1] != "A" else "B")) is None
    assert again.verify_key("es_000000000000_" + secret) is None
    assert again.verify_key("Bearer nonsense") is None
    # two keys with the same secret would still hash differently (per-key salt)
    salts = again._reader().execute("SELECT salt, hash FROM api_keys").fetchall()
    assert len({s for s, _ in salts}) == len(salts)
    assert "hash" not in record.public() and "salt" not in record.public()


def test_rotate_keeps_the_grants_and_revokes_the_old_key(store: Store) -> None:
    old, rec = store.create_key("acme", ["read"], ["a", "b"])
    new, rotated = store.rotate_key(rec.prefix)
    assert store.verify_key(old) is None and store.verify_key(new) is not None
    assert (rotated.tenant, rotated.scopes, rotated.collections) == ("acme", ("read",), ("a", "b"))
    graced, rec2 = store.create_key()
    newer, _ = store.rotate_key(rec2.prefix, grace_s=60)
    assert store.verify_key(graced) is not None and store.verify_key(newer) is not None
    store.revoke_key(rec2.prefix)
    assert store.verify_key(graced) is None
    with pytest.raises(NotFound):
        store.revoke_key("ffffffffffff")
    with pytest.raises(InvalidInput):
        store.create_key("Bad Tenant")
    with pytest.raises(InvalidInput):
        store.create_key(scopes=["root"])


def test_a_tenant_resolves_names_only_in_its_namespace() -> None:
    a = Principal("acme", frozenset({"admin"}))
    d = Principal("default", frozenset({"read"}))
    assert a.qualify("docs") == "acme:docs" and d.qualify("docs") == "docs"
    for p in (a, d):
        with pytest.raises(NotFound):
            p.qualify("other:docs")  # a name with ':' is nobody's
    assert a.owns("acme:docs") and not a.owns("docs") and not a.owns("acmex:docs")
    assert d.owns("docs") and not d.owns("acme:docs")
    assert a.display("acme:docs") == "docs"
    assert a.scrub("collection 'acme:docs' does not exist") == "collection 'docs' does not exist"
    assert a.may("write") and a.may("read") and not a.may("metrics")
    assert not d.may("write") and not d.may("metrics")
    assert Principal("default", frozenset({"metrics"})).may("metrics")


def test_every_route_declares_one_scope_or_is_open() -> None:
    services = SimpleNamespace(settings=Settings(), metrics=Metrics())
    app = create_app(services)  # type: ignore[arg-type]
    missing = []
    for route in app.routes:
        if not isinstance(route, APIRoute) or route.path in OPEN_PATHS:
            continue
        scopes = [d.call for d in route.dependant.dependencies if d.call in SCOPE_DEPENDENCIES]
        if len(scopes) != 1:
            missing.append(f"{sorted(route.methods)} {route.path}")
    assert not missing, f"routes without exactly one scope dependency: {missing}"
    writes = {
        (m, r.path)
        for r in app.routes
        if isinstance(r, APIRoute)
        for m in r.methods
        if m in ("POST", "PATCH", "DELETE")
    }
    read_posts = {("POST", "/v1/embeddings"), ("POST", "/v1/collections/{name}/query")}
    for method, path in writes - read_posts:
        route = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == path
                     and method in r.methods)  # fmt: skip
        scope = next(SCOPE_DEPENDENCIES[d.call] for d in route.dependant.dependencies
                     if d.call in SCOPE_DEPENDENCIES)  # fmt: skip
        assert scope in ("write", "admin"), f"{method} {path} changes data with scope {scope}"


def test_filters_nested_too_deep_or_too_large_are_refused_with_what_to_fix() -> None:
    check_filter({"lang": "en", "year": {"$gte": 2020}, "tag": {"$in": ["a", "b"]}}, 64)
    with pytest.raises(InvalidInput, match=r"nested too deep at a\.b\.c"):
        check_filter({"a": {"b": {"c": {"d": 1}}}}, 64)
    with pytest.raises(InvalidInput, match="over 64 conditions"):
        check_filter({"tag": {"$in": list(range(100))}}, 64)


def test_token_buckets_refuse_with_a_retry_time_and_admit_big_requests_on_credit() -> None:
    limiter = RateLimiter(default_rps=2, default_texts=10, burst_s=1)
    t0 = 1000.0
    limiter.charge("k", "requests", 1, None, now=t0)
    limiter.charge("k", "requests", 1, None, now=t0)
    with pytest.raises(Overloaded) as refused:
        limiter.charge("k", "requests", 1, None, now=t0)
    assert 0 < refused.value.retry_after <= 1.0
    limiter.charge("k", "requests", 1, None, now=t0 + 0.6)  # refilled
    limiter.charge("k", "texts", 50, None, now=t0)  # over the bucket: admitted, on credit
    with pytest.raises(Overloaded) as debt:
        limiter.charge("k", "texts", 1, None, now=t0 + 1)
    assert debt.value.retry_after > 3
    limiter.charge("own", "requests", 1, 1000.0, now=t0)  # a key's own rate wins
    limiter.charge("off", "requests", 10**6, None, now=t0)
    unlimited = RateLimiter(0, 0, 1)
    for _ in range(100):
        unlimited.charge("k", "requests", 1, None, now=t0)


def test_no_auth_only_on_loopback_and_hosts_allow_list() -> None:
    check_bind(Settings(host="127.0.0.1", insecure_no_auth=True))
    check_bind(Settings(host="::1", insecure_no_auth=True))
    check_bind(Settings(host="0.0.0.0"))  # with auth: fine
    for host in ("0.0.0.0", "192.168.1.5", "example.com", "::"):
        with pytest.raises(ConfigError, match="only on a loopback address"):
            check_bind(Settings(host=host, insecure_no_auth=True))
    with pytest.raises(ConfigError, match="both --tls-cert and --tls-key"):
        check_bind(Settings(tls_cert=Path("/tmp/c.pem")))
    hosts = allowed_hosts(Settings(host="0.0.0.0", allowed_hosts=["api.example.com"]))
    assert hosts == {"localhost", "127.0.0.1", "::1", "api.example.com"}
    assert allowed_hosts(Settings(allowed_hosts=["*"])) is None
    assert host_of("LocalHost:8080") == "localhost" and host_of("[::1]:80") == "::1"
    assert host_of("127.0.0.1") == "127.0.0.1" and host_of("evil.com.:80") == "evil.com."


def test_serve_refuses_no_auth_on_a_network_address(tmp_path: Path) -> None:
    out = CliRunner().invoke(
        build_cli(),
        ["serve", "--host", "0.0.0.0", "--insecure-no-auth", "--data-dir", str(tmp_path)],
    )
    assert out.exit_code == 2, out.output
    assert "only on a loopback address" in out.output


def test_keys_cli_create_list_rotate_revoke_audit(tmp_path: Path) -> None:
    cli, data = build_cli(), ["--data-dir", str(tmp_path)]
    made = CliRunner().invoke(
        cli, ["keys", "create", *data, "--tenant", "acme", "--scope", "write",
              "--collection", "docs", "--rps", "3"],
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    key = made.stdout.strip().splitlines()[-1]
    prefix = key.split("_")[1]
    listed = CliRunner().invoke(cli, ["keys", "list", *data])
    assert prefix in listed.output and key.split("_", 2)[2] not in listed.output
    assert "acme" in listed.output and "docs" in listed.output
    rotated = CliRunner().invoke(cli, ["keys", "rotate", prefix, *data])
    assert rotated.exit_code == 0, rotated.output
    new = rotated.stdout.strip().splitlines()[-1]
    assert new.startswith("es_") and new != key
    revoked = CliRunner().invoke(cli, ["keys", "revoke", new.split("_")[1], *data])
    assert revoked.exit_code == 0 and "revoked" in revoked.output
    missing = CliRunner().invoke(cli, ["keys", "revoke", "ffffffffffff", *data])
    assert missing.exit_code == 1 and "no API key" in missing.output
    audit = CliRunner().invoke(cli, ["keys", "audit", *data])
    assert audit.output.count("cli keys") == 3 and key not in audit.output
    st = Store(tmp_path / "store.db")
    assert all(not r.active() for r in st.keys("acme"))
    assert time.time() - st.keys()[0].created_at < 60
