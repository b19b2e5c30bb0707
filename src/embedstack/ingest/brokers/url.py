"""The `--queue` setting: which `Queue` a node uses, as a URL.

* `sqlite` (the default): the embedded queue, DATA_DIR/queue.db.
* `kafka://HOST:PORT[,HOST:PORT...][?topic=T&group=G&partitions=N]`: a Kafka-protocol broker;
  the job log is topic T (default embedstack-jobs, created with N partitions, default 4, if
  missing), offsets are committed by group G (default embedstack), and the per-job state table
  is DATA_DIR/kafka-T.db (see brokers/kafka.py).
* `redis://[:PASSWORD@]HOST:PORT[/DB][?name=NAME]` (or `rediss://` for TLS): Redis Streams,
  every key under NAME (default embedstack; see brokers/redis_streams.py).

A URL that does not parse is a ConfigError naming what to fix (the CLI prints it, exit 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

from embedstack.errors import ConfigError
from embedstack.ingest.queue import Queue, SqliteQueue

SQLITE = "sqlite"
OPTIONS = {
    "kafka": {"topic": "embedstack-jobs", "group": "embedstack", "partitions": "4"},
    "redis": {"name": "embedstack"},
    "rediss": {"name": "embedstack"},
}
EXAMPLES = "sqlite, kafka://127.0.0.1:9092 or redis://127.0.0.1:6379"
KAFKA_STATE_GLOB = "kafka-*.db"
_NAME = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass(frozen=True)
class QueueUrl:
    scheme: str  # "sqlite" | "kafka" | "redis" | "rediss"
    hosts: tuple[str, ...] = ()  # "HOST:PORT" each
    options: dict[str, str] = field(default_factory=dict)
    url: str = SQLITE  # as given, for redis-py (which reads the password and db from it)


def _bad(url: str, why: str) -> ConfigError:
    return ConfigError(f"queue URL {url!r}: {why} (e.g. {EXAMPLES})")


def _host_port(url: str, part: str) -> str:
    host, sep, port = part.rpartition(":")
    if not sep or not host:
        raise _bad(url, f"{part!r} needs HOST:PORT")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise _bad(url, f"port {port!r} is not a number from 1 to 65535")
    return f"{host}:{int(port)}"


def parse_queue_url(url: str) -> QueueUrl:
    """Parse `url`; ConfigError naming the problem if it is not one of the forms above."""
    text = url.strip()
    if text in ("", SQLITE, "sqlite://"):
        return QueueUrl(SQLITE)
    if "://" not in text:
        raise _bad(url, "not a URL; give a scheme")
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in OPTIONS:
        raise _bad(url, f"unknown scheme {parts.scheme!r}: use kafka://, redis://, rediss://")
    netloc = parts.netloc.rpartition("@")[2]
    if not netloc:
        raise _bad(url, "no broker address")
    if scheme == "kafka":
        if parts.netloc != netloc:
            raise _bad(url, "kafka:// takes no user or password here")
        if parts.path not in ("", "/"):
            raise _bad(url, f"kafka:// takes no path (got {parts.path!r}); use ?topic=")
        hosts = tuple(_host_port(url, h) for h in netloc.split(","))
    else:
        if "," in netloc:
            raise _bad(url, "redis:// takes one server")
        hosts = (_host_port(url, netloc),)
        db = parts.path.strip("/")
        if db and not db.isdigit():
            raise _bad(url, f"the database {db!r} must be a number (redis://HOST:PORT/0)")
    options = dict(OPTIONS[scheme])
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in options:
            known = ", ".join(sorted(OPTIONS[scheme]))
            raise _bad(url, f"unknown option {key!r} for {scheme}:// (known: {known})")
        options[key] = value
    for key, value in options.items():
        if key == "partitions":
            if not value.isdigit() or int(value) < 1:
                raise _bad(url, f"partitions must be a whole number >= 1, got {value!r}")
        elif not _NAME.match(value):
            raise _bad(url, f"{key} {value!r} must be 1-200 of A-Z a-z 0-9 . _ -")
    query_free = text.split("?", 1)[0]
    return QueueUrl(scheme, hosts, options, query_free)


def open_queue(url: str, data_dir: Path, max_attempts: int) -> Queue:
    """The `Queue` that `url` names, for a node whose data folder is `data_dir`."""
    parsed = parse_queue_url(url)
    if parsed.scheme == SQLITE:
        return SqliteQueue(data_dir / "queue.db", max_attempts=max_attempts)
    try:
        if parsed.scheme == "kafka":
            return _open_kafka(parsed, data_dir, max_attempts)
        from embedstack.ingest.brokers.redis_streams import RedisStreamsQueue
    except ImportError as exc:
        raise ConfigError(
            f"queue URL {url!r} needs the broker client libraries: pip install "
            f"'embedstack[brokers]' ({exc})"
        ) from exc
    return RedisStreamsQueue.connect(parsed.url, parsed.options["name"], max_attempts)


def state_path(data_dir: Path, topic: str) -> Path:
    """Where a node keeps the job state table of Kafka topic `topic` (KAFKA_STATE_GLOB)."""
    return data_dir / f"kafka-{topic}.db"


def _open_kafka(parsed: QueueUrl, data_dir: Path, max_attempts: int) -> Queue:
    from embedstack.ingest.brokers.kafka import KafkaQueue

    topic = parsed.options["topic"]
    state = SqliteQueue(state_path(data_dir, topic), max_attempts=max_attempts)
    try:
        return KafkaQueue(
            ",".join(parsed.hosts), state, topic=topic, group=parsed.options["group"],
            partitions=int(parsed.options["partitions"]),
        )  # fmt: skip
    except BaseException:
        state.close()
        raise
