"""The shard write log a URL names: kafka://HOST:PORT[,HOST:PORT] (a Kafka-protocol broker,
cluster/log.py) or redis://HOST:PORT/DB (Redis Streams, cluster/stream_log.py)."""

from __future__ import annotations

from embedstack.cluster.log import PartitionReader, ShardLog, kafka_bootstrap
from embedstack.cluster.stream_log import SCHEME, StreamPartitionReader, StreamShardLog
from embedstack.errors import ConfigError

Log = ShardLog | StreamShardLog
Reader = PartitionReader | StreamPartitionReader


def shard_log(url: str, trims: bool = False) -> Log:
    """The producing side of the log at `url`; `trims`: whether a Kafka broker may be asked to
    delete records (DeleteRecords; Redis Streams always can)."""
    if url.startswith(SCHEME):
        return StreamShardLog(url)
    if not url.startswith("kafka://"):
        raise ConfigError(
            f"log URL {url!r} is neither kafka://HOST:PORT nor redis://HOST:PORT/DB (Streams)"
        )
    return ShardLog(kafka_bootstrap(url), trims=trims)


def node_address(url: str) -> str:
    """What a shard node is given to read the log: the Kafka bootstrap, or the Redis URL."""
    return url if url.startswith(SCHEME) else kafka_bootstrap(url)


def open_reader(address: str, topic: str, partition: int, start: int, group: str) -> Reader:
    """A replica's reader of `partition` from offset `start` (`address`: node_address)."""
    if address.startswith(SCHEME):
        return StreamPartitionReader(address, topic, partition, start, group)
    return PartitionReader(address, topic, partition, start, group)
