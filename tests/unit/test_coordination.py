"""Catalog URLs: the Sentinel form's parts, and a message naming the forms for anything else."""

from __future__ import annotations

import pytest

from embedstack.cluster.coordination import CatalogRedis, catalog_client, parse_sentinel_url
from embedstack.errors import ConfigError


def test_sentinel_url_names_sentinels_master_and_db() -> None:
    url = "redis+sentinel://127.0.0.1:26379,h2:26380,h3:26381/cat/3"
    hosts, master, db = parse_sentinel_url(url)
    assert hosts == [("127.0.0.1", 26379), ("h2", 26380), ("h3", 26381)]
    assert (master, db) == ("cat", 3)
    assert parse_sentinel_url("redis+sentinel://h:1/cat")[2] == 0


@pytest.mark.parametrize(
    "url",
    [
        "postgres://h/db",
        "redis+sentinel://h:1",
        "redis+sentinel://h/cat/0",
        "redis+sentinel://h:1/cat/x",
        "redis+sentinel:///cat",
    ],
)
def test_a_bad_catalog_url_names_the_forms(url: str) -> None:
    with pytest.raises(ConfigError, match="redis\\+sentinel://HOST:PORT"):
        catalog_client(url)


def test_a_plain_server_is_not_replicated() -> None:
    client = catalog_client("redis://127.0.0.1:1/0")  # connects lazily
    assert isinstance(client, CatalogRedis) and client.replicas == 0
