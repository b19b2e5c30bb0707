"""The --queue URL: what parses, what each bad form says, and the CLI's one line + exit 2."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from embedstack.cli import build_cli
from embedstack.cli.common import CONFIG_EXIT
from embedstack.errors import ConfigError
from embedstack.ingest.brokers.url import QueueUrl, open_queue, parse_queue_url
from embedstack.ingest.queue import SqliteQueue


def test_sqlite_is_the_default_and_opens_the_embedded_queue(tmp_path: Path) -> None:
    assert parse_queue_url("sqlite") == parse_queue_url("") == QueueUrl("sqlite")
    queue = open_queue("sqlite", tmp_path, max_attempts=2)
    try:
        assert isinstance(queue, SqliteQueue) and queue.path == tmp_path / "queue.db"
        assert queue.max_attempts == 2
    finally:
        queue.close()


def test_kafka_url_with_defaults_and_options() -> None:
    plain = parse_queue_url("kafka://127.0.0.1:9092")
    assert plain.hosts == ("127.0.0.1:9092",)
    assert plain.options == {"topic": "embedstack-jobs", "group": "embedstack", "partitions": "4"}
    full = parse_queue_url("kafka://a:1,b:2?topic=jobs.v1&group=g-1&partitions=8")
    assert full.hosts == ("a:1", "b:2")
    assert full.options == {"topic": "jobs.v1", "group": "g-1", "partitions": "8"}


def test_redis_url_keeps_password_and_database_for_the_client() -> None:
    url = parse_queue_url("redis://:secret@127.0.0.1:6379/2?name=ingest")
    assert (url.scheme, url.hosts, url.options) == (
        "redis",
        ("127.0.0.1:6379",),
        {"name": "ingest"},
    )
    assert url.url == "redis://:secret@127.0.0.1:6379/2"
    assert parse_queue_url("rediss://h:6380").scheme == "rediss"


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("localhost:9092", "not a URL"),
        ("amqp://h:5672", "unknown scheme 'amqp'"),
        ("kafka://", "no broker address"),
        ("kafka://nohost", "needs HOST:PORT"),
        ("kafka://h:99999", "port '99999'"),
        ("kafka://h:x", "port 'x'"),
        ("kafka://h:1/jobs", "takes no path"),
        ("kafka://u:p@h:1", "no user or password"),
        ("kafka://h:1?partitions=0", "partitions must be a whole number"),
        ("kafka://h:1?bogus=1", "unknown option 'bogus'"),
        ("kafka://h:1?topic=a%20b", "topic 'a b'"),
        ("redis://a:1,b:2", "one server"),
        ("redis://h:1/zero", "must be a number"),
        ("redis://h:1?topic=x", "unknown option 'topic'"),
    ],
)
def test_bad_urls_say_what_to_fix(url: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_queue_url(url)
    assert says in caught.value.message
    assert "e.g." in caught.value.message  # every message shows the forms that work


@pytest.mark.parametrize("command", ["serve", "worker"])
def test_cli_bad_queue_url_is_one_line_exit_2(command: str, tmp_path: Path) -> None:
    args = [command, "--data-dir", str(tmp_path), "--queue", "kafka://nohost"]
    out = CliRunner().invoke(build_cli(), args)
    assert out.exit_code == CONFIG_EXIT, out.output
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert lines == [
        "Error: configuration: queue URL 'kafka://nohost': 'nohost' needs HOST:PORT "
        "(e.g. sqlite, kafka://127.0.0.1:9092 or redis://127.0.0.1:6379)"
    ]
