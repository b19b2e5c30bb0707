"""Access control on a real server: keys and scopes, tenant isolation on every route, rate
limits, the audit log, Host checks, TLS."""

from __future__ import annotations

import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from embedstack.storage.store import Store
from embedstack.testing import EMBEDSTACK
from tests.conftest import Server, server_env, wait_job

SECRET_TEXT = "bravo-tenant-private-text"


class Keys(dict[str, str]):
    def prefix(self, name: str) -> str:
        return self[name].split("_")[1]


@pytest.fixture(scope="module")
def keys_and_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Keys, Server]]:
    data = tmp_path_factory.mktemp("access") / "data"
    store = Store(data / "store.db")
    keys = Keys()
    for name, tenant, scopes, extra in (
        ("admin_a", "alpha", ["admin"], {}),
        ("admin_b", "bravo", ["admin"], {}),
        ("read_a", "alpha", ["read"], {}),
        ("write_a", "alpha", ["write"], {}),
        ("grant_a", "alpha", ["write"], {"collections": ["one"]}),
        ("admin", "default", ["admin"], {}),
        ("metrics", "default", ["metrics"], {}),
        ("slow", "alpha", ["read"], {"rate_rps": 1.0}),
        ("revokable", "alpha", ["read"], {}),
    ):
        keys[name] = store.create_key(tenant, scopes, **extra)[0]  # type: ignore[arg-type]
    store.close()
    env = server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test")
    server = Server(data, env)
    server.auth = True
    server.start()
    yield keys, server
    server.stop()


def _client(server: Server, key: str | None = None, **headers: str) -> httpx.Client:
    c = server.client(api_key=key) if key else httpx.Client(base_url=server.url, timeout=60)
    c.headers.update(headers)
    return c


def test_no_key_or_a_bad_key_is_401_and_health_stays_open(
    keys_and_server: tuple[Keys, Server],
) -> None:
    keys, server = keys_and_server
    anon = _client(server)
    assert anon.get("/healthz").status_code == 200
    ready = anon.get("/readyz")
    assert ready.status_code == 200 and ready.json()["indexes"] == []
    for method, path in (("GET", "/v1/collections"), ("POST", "/v1/embeddings"),
                         ("GET", "/v1/models"), ("GET", "/metrics"), ("GET", "/v1/jobs/x")):  # fmt: skip
        r = anon.request(method, path, json={"input": "x"})
        assert r.status_code == 401, (path, r.text)
        assert r.headers["www-authenticate"] == "Bearer"
        assert "missing API key" in r.json()["error"]["message"]
    bad = keys["read_a"][:-2] + "zz"
    for headers in ({"Authorization": f"Bearer {bad}"}, {"Authorization": "Basic dXNlcg=="},
                    {"api-key": "es_nope"}):  # fmt: skip
        r = _client(server, **headers).get("/v1/collections")
        assert r.status_code == 401 and "invalid API key" in r.text
    assert _client(server, **{"api-key": keys["read_a"]}).get("/v1/collections").status_code == 200


def test_scopes_are_403_with_what_is_missing(keys_and_server: tuple[Keys, Server]) -> None:
    keys, server = keys_and_server
    admin, read, write = (_client(server, keys[k]) for k in ("admin_a", "read_a", "write_a"))
    assert admin.post("/v1/collections", json={"name": "scoped"}).status_code == 201
    docs = {"documents": [{"id": "1", "text": "hello scopes"}]}
    r = read.post("/v1/collections/scoped/documents", json=docs)
    assert r.status_code == 403 and "lacks the 'write' scope" in r.json()["error"]["message"]
    assert write.post("/v1/collections", json={"name": "nope"}).status_code == 403
    assert write.delete("/v1/collections/scoped").status_code == 403
    assert write.post("/v1/aliases", json={"alias": "x", "collection": "scoped"}).status_code == 403
    assert write.get("/v1/keys").status_code == 403 and read.get("/v1/audit").status_code == 403
    job = write.post("/v1/collections/scoped/documents", json=docs)
    assert job.status_code == 202
    assert wait_job(read, job.json()["job_id"])["status"] == "done"
    hits = read.post("/v1/collections/scoped/query", json={"text": "hello", "k": 1})
    assert hits.status_code == 200 and hits.json()["collection"] == "scoped"
    assert read.post("/v1/embeddings", json={"input": "hi"}).status_code == 200
    # /metrics labels name every tenant's collections: the default tenant's metrics/admin keys
    assert _client(server, keys["metrics"]).get("/metrics").status_code == 200
    assert _client(server, keys["admin"]).get("/metrics").status_code == 200
    assert admin.get("/metrics").status_code == 403 and read.get("/metrics").status_code == 403
    assert _client(server, keys["metrics"]).get("/v1/collections").status_code == 403


def test_collection_grants_limit_a_key_to_its_collections(
    keys_and_server: tuple[Keys, Server],
) -> None:
    keys, server = keys_and_server
    admin, grant = _client(server, keys["admin_a"]), _client(server, keys["grant_a"])
    for name in ("one", "two"):
        assert admin.post("/v1/collections", json={"name": name}).status_code == 201
    assert [c["name"] for c in grant.get("/v1/collections").json()["collections"]] == ["one"]
    docs = {"documents": [{"id": "1", "text": "granted"}]}
    assert grant.post("/v1/collections/one/documents", json=docs).status_code == 202
    r = grant.post("/v1/collections/two/documents", json=docs)
    assert r.status_code == 403 and "no grant for collection 'two'" in r.text
    assert grant.post("/v1/collections/two/query", json={"text": "x"}).status_code == 403
    # an admin may not hand out more than it holds
    wider = grant.post("/v1/keys", json={"scopes": ["admin"]})
    assert wider.status_code == 403


def _assert_hidden(r: httpx.Response, *secrets: str) -> None:
    assert r.status_code in (403, 404), (r.request.method, r.request.url, r.status_code, r.text)
    asked = str(r.request.url) + r.request.content.decode()
    for s in (SECRET_TEXT, "bravo:", *secrets):
        assert s in asked or s not in r.text, (r.request.url, r.text)


def test_a_tenant_cannot_read_write_list_query_alias_upgrade_or_detect_another_tenants_data(
    keys_and_server: tuple[Keys, Server],
) -> None:
    """Every route that takes a collection, alias, job or key, as tenant alpha against tenant
    bravo's: 404 (or 403), never data, and listings show only alpha's own."""
    keys, server = keys_and_server
    a, b = _client(server, keys["admin_a"]), _client(server, keys["admin_b"])
    # bravo: a collection with a document, an alias, a finished job, an upgrade in progress
    assert b.post("/v1/collections", json={"name": "vault"}).status_code == 201
    docs = {"documents": [{"id": "d1", "text": SECRET_TEXT, "metadata": {"k": "v"}}]}
    job_b = b.post("/v1/collections/vault/documents", json=docs).json()["job_id"]
    assert wait_job(b, job_b)["status"] == "done"
    assert b.post("/v1/aliases", json={"alias": "bvault", "collection": "vault"}).status_code == 200
    up = b.post("/v1/collections/vault/upgrade", json={"model": "hashing-test-b"})
    assert up.status_code == 202, up.text
    key_b = keys.prefix("admin_b")

    listed = a.get("/v1/collections").json()["collections"]
    assert "vault" not in {c["name"] for c in listed}
    assert "bvault" not in a.get("/v1/aliases").json()["aliases"]
    assert key_b not in a.get("/v1/keys").text
    assert "vault" not in a.get("/v1/audit").text
    assert "vault" not in a.get("/readyz").text
    coll = "/v1/collections/vault"
    for method, path, body in (
        ("GET", coll, None),
        ("GET", "/v1/collections/bravo:vault", None),
        ("GET", "/v1/collections/bvault", None),
        ("PATCH", coll, {"index": {"type": "flat"}}),
        ("POST", f"{coll}/documents", docs),
        ("DELETE", f"{coll}/documents/d1", None),
        ("POST", f"{coll}/query", {"text": SECRET_TEXT, "k": 5}),
        ("POST", "/v1/collections/bvault/query", {"text": SECRET_TEXT, "k": 5}),
        ("POST", "/v1/collections/bravo:vault/query", {"text": SECRET_TEXT, "k": 5}),
        ("POST", f"{coll}/upgrade", {"model": "hashing-test-b"}),
        ("GET", f"{coll}/upgrade", None),
        ("POST", f"{coll}/upgrade/cutover", {"force": True}),
        ("POST", f"{coll}/rollback", None),
        ("POST", f"{coll}/retire", None),
        ("POST", "/v1/aliases", {"alias": "mine", "collection": "vault"}),
        ("POST", "/v1/aliases", {"alias": "mine", "collection": "bravo:vault"}),
        ("DELETE", "/v1/aliases/bvault", None),
        ("GET", f"/v1/jobs/{job_b}", None),
        ("POST", f"/v1/keys/{key_b}/rotate", None),
        ("DELETE", f"/v1/keys/{key_b}", None),
        ("DELETE", coll, None),
    ):
        _assert_hidden(a.request(method, path, json=body), job_b if "jobs" not in path else "d1")
    # a job of another tenant reads exactly like one that never existed
    other = a.get(f"/v1/jobs/{job_b}").json()["error"]["message"]
    assert other.replace(job_b, "X") == a.get("/v1/jobs/nope").json()["error"]["message"].replace(
        "nope", "X"
    )
    # alpha's names are its own namespace: the same name is a different collection
    mine = a.post("/v1/collections", json={"name": "vault"})
    assert mine.status_code == 201 and mine.json()["name"] == "vault"
    assert mine.json()["documents"] == 0
    hits = a.post("/v1/collections/vault/query", json={"text": SECRET_TEXT, "k": 5}).json()
    assert hits["hits"] == [] and hits["collection"] == "vault"
    # ...and bravo's data is untouched by everything alpha tried
    theirs = b.get("/v1/collections/vault").json()
    assert theirs["name"] == "vault" and theirs["documents"] == 1
    assert b.get("/v1/aliases").json()["aliases"] == {"bvault": "vault"}
    assert b.get(f"/v1/jobs/{job_b}").json()["collection"] == "vault"
    assert b.get("/v1/collections/vault/upgrade").json()["collection"] == "vault"
    found = b.post("/v1/collections/bvault/query", json={"text": SECRET_TEXT, "k": 1}).json()
    assert found["hits"][0]["text"] == SECRET_TEXT and found["collection"] == "vault"
    # errors name the tenant's own collections plainly
    missing = a.get("/v1/collections/absent").json()["error"]["message"]
    assert "'absent'" in missing and "alpha:" not in missing
    # the default tenant does not see the others either
    d = _client(server, keys["admin"])
    assert all(":" not in c["name"] for c in d.get("/v1/collections").json()["collections"])
    assert d.get("/v1/collections/vault").status_code == 404


def test_audit_log_records_who_what_when_without_text_or_keys(
    keys_and_server: tuple[Keys, Server],
) -> None:
    keys, server = keys_and_server
    b = _client(server, keys["admin_b"])
    b.post("/v1/collections", json={"name": "audited"})
    docs = {"documents": [{"id": "x", "text": "audited-private-words"}]}
    b.post("/v1/collections/audited/documents", json=docs)
    made = b.post("/v1/keys", json={"scopes": ["read"], "name": "reader"}).json()
    entries = b.get("/v1/audit").json()["entries"]
    actions = [(e["action"], e["collection"]) for e in entries]
    assert ("POST /v1/collections/{name}/documents", "audited") in actions
    assert ("POST /v1/collections", "audited") in actions
    assert ("POST /v1/keys", None) in actions
    add = next(e for e in entries if e["action"] == "POST /v1/collections/{name}/documents"
               and e["collection"] == "audited")  # fmt: skip
    assert add["key"] == keys.prefix("admin_b") and add["tenant"] == "bravo"
    assert add["status"] == 202 and add["detail"]["documents"] == 1 and add["at"] > 0
    text = b.get("/v1/audit?limit=1000").text
    assert "audited-private-words" not in text and made["key"] not in text
    assert keys["admin_b"].split("_", 2)[2] not in text
    assert all(e["tenant"] == "bravo" for e in entries)
    # a refused request is recorded too
    r = _client(server, keys["read_a"]).post("/v1/collections", json={"name": "z"})
    assert r.status_code == 403
    alpha = _client(server, keys["admin_a"]).get("/v1/audit").json()["entries"]
    assert any(e["status"] == 403 and e["key"] == keys.prefix("read_a") for e in alpha)


def test_keys_over_http_rotate_and_revoke_take_effect_at_once(
    keys_and_server: tuple[Keys, Server],
) -> None:
    keys, server = keys_and_server
    a = _client(server, keys["admin_a"])
    made = a.post("/v1/keys", json={"scopes": ["read"]})
    assert made.status_code == 201 and made.json()["tenant"] == "alpha"
    new = made.json()["key"]
    assert _client(server, new).get("/v1/collections").status_code == 200
    listed = a.get("/v1/keys").json()["keys"]
    assert made.json()["prefix"] in {k["prefix"] for k in listed}
    assert new not in a.get("/v1/keys").text
    rotated = a.post(f"/v1/keys/{made.json()['prefix']}/rotate").json()["key"]
    assert _client(server, new).get("/v1/collections").status_code == 401
    assert _client(server, rotated).get("/v1/collections").status_code == 200
    # revoked through the CLI on the data dir, while the server runs
    revokable = _client(server, keys["revokable"])
    assert revokable.get("/v1/collections").status_code == 200
    out = subprocess.run(
        [*EMBEDSTACK, "keys", "revoke", keys.prefix("revokable"), "--data-dir",
         str(server.data_dir)], env=server_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert revokable.get("/v1/collections").status_code == 401


def test_per_key_rate_limit_is_429_with_retry_after(keys_and_server: tuple[Keys, Server]) -> None:
    keys, server = keys_and_server
    slow = _client(server, keys["slow"])  # 1 request/s, 2 s of burst
    codes = [slow.get("/v1/models") for _ in range(4)]
    refused = [r for r in codes if r.status_code == 429]
    assert refused, [r.status_code for r in codes]
    assert int(refused[0].headers["retry-after"]) >= 1
    assert "rate limit of 1 requests/s" in refused[0].json()["error"]["message"]
    assert _client(server, keys["read_a"]).get("/v1/models").status_code == 200  # per key


def test_filter_nesting_is_refused_with_what_to_fix(keys_and_server: tuple[Keys, Server]) -> None:
    keys, server = keys_and_server
    a = _client(server, keys["admin_a"])
    a.post("/v1/collections", json={"name": "filtered"})
    deep = {"text": "x", "filter": {"a": {"$in": [[["x"]]]}}}
    r = a.post("/v1/collections/filtered/query", json=deep)
    assert r.status_code == 422 and "nested too deep" in r.text
    wide = {"text": "x", "filter": {"a": {"$in": [str(i) for i in range(5000)]}}}
    r = a.post("/v1/collections/filtered/query", json=wide)
    assert r.status_code == 422 and "conditions" in r.text


def test_host_and_origin_allow_list_with_and_without_auth(
    keys_and_server: tuple[Keys, Server], hashing_server: Server
) -> None:
    keys, server = keys_and_server
    for srv, key in ((server, keys["read_a"]), (hashing_server, None)):  # no-auth server too
        c = _client(srv, key) if key else srv.client()
        for host in ("evil.example", "evil.example:80", "127.0.0.1.nip.io"):
            r = c.get("/v1/collections", headers={"Host": host})
            assert r.status_code == 421, r.text
            assert "EMBEDSTACK_ALLOWED_HOSTS" in r.json()["error"]["message"]
        for host in ("localhost", f"127.0.0.1:{srv.port}", f"localhost:{srv.port}", "[::1]"):
            assert c.get("/v1/collections", headers={"Host": host}).status_code == 200
        assert c.get("/healthz", headers={"Host": "evil.example"}).status_code == 200
        evil = c.post("/v1/collections", json={"name": "csrf"},
                      headers={"Origin": "http://evil.example"})  # fmt: skip
        assert evil.status_code == 403 and "cross-origin" in evil.text
        same = c.get("/v1/collections", headers={"Origin": f"http://localhost:{srv.port}"})
        assert same.status_code == 200


def _self_signed(folder: Path) -> tuple[Path, Path]:
    """A one-day self-signed certificate for localhost / 127.0.0.1 and its key (PEM files)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    private = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    alt = x509.SubjectAlternativeName(
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    )
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(alt, critical=False)
        .sign(private, hashes.SHA256())
    )
    cert, key = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert, key


def test_tls_from_certificate_files(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    data = tmp_path / "data"
    store = Store(data / "store.db")
    full = store.create_key("default", ["read"])[0]
    store.close()
    server = Server(data, server_env(EMBEDSTACK_DEFAULT_MODEL="hashing-test"))
    server.auth, server.tls, server.api_key = True, (cert, key), full
    server.start()
    try:
        assert server.url.startswith("https://")
        with server.client() as c:
            assert c.get("/v1/collections").status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served
            httpx.get(server.url.replace("https", "http") + "/healthz", timeout=5)
        with pytest.raises(httpx.HTTPError):  # an untrusted certificate is refused by clients
            httpx.get(server.url + "/healthz", timeout=5)
    finally:
        server.stop()


def test_a_fresh_random_name_never_collides(keys_and_server: tuple[Keys, Server]) -> None:
    """Names made by two tenants at once stay separate (stored as tenant:name)."""
    keys, server = keys_and_server
    name = uuid.uuid4().hex[:12]
    a, b = _client(server, keys["admin_a"]), _client(server, keys["admin_b"])
    assert a.post("/v1/collections", json={"name": name}).status_code == 201
    assert b.post("/v1/collections", json={"name": name}).status_code == 201
    assert a.delete(f"/v1/collections/{name}").status_code == 200
    assert b.get(f"/v1/collections/{name}").status_code == 200


def test_the_python_client_sends_its_key_and_manages_keys(
    keys_and_server: tuple[Keys, Server],
) -> None:
    from embedstack.client import AuthenticationError, Client

    keys, server = keys_and_server
    with Client(server.url, api_key=keys["admin_a"]) as es:
        made = es.create_key(["read"], collections=["one"], name="client")
        assert made.tenant == "alpha" and made.collections == ["one"]
        assert made.prefix in {k.prefix for k in es.list_keys()}
        assert any(e.action == "POST /v1/keys" for e in es.audit(limit=10))
        rotated = es.rotate_key(made.prefix, grace_s=0)
        assert es.revoke_key(rotated.prefix).active is False
    with Client(server.url, api_key=made.key) as old, pytest.raises(AuthenticationError) as e:
        old.list_collections()
    assert e.value.status == 401
    with Client(server.url, api_key=keys["read_a"]) as reader, pytest.raises(AuthenticationError):
        reader.create_key(["read"])
