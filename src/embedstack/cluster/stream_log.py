"""The shard write log on Redis Streams (`serve --cluster ... --queue redis://HOST:PORT/DB`), the
same contract as the Kafka one (cluster/log.py): one stream per (topic, partition), records in
append order, integer offsets from 0 (so replica positions, snapshots and jobs are the same
numbers on both logs).

Offsets are explicit stream ids `1-N` (N the offset), taken from a per-topic counter by a Lua
script that appends a partition's records in one step, so concurrent API nodes never reuse or
reorder an offset. With the server's fsync-per-write append-only file, an append that returned
is durable (infra/local.py start_redis).

Retention: `trim` deletes the records before an offset (XTRIM MINID), which the router does once
every replica of the shard is past it (router.py retention_points). A reader whose position is
below what is left raises LogTrimmed instead of skipping records: that replica must start again
from a snapshot (ShardNode.resync)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from embedstack.cluster.log import LogTrimmed
from embedstack.errors import Unavailable

SCHEME = "redis://"

# KEYS[1] the stream, KEYS[2] the topic's counters; ARGV[1] the partition, ARGV[2..] values
APPEND = """
local last = -1
for i = 2, #ARGV do
  last = redis.call('HINCRBY', KEYS[2], ARGV[1], 1) - 1
  redis.call('XADD', KEYS[1], '1-' .. last, 'v', ARGV[i])
end
return last
"""


def _stream(topic: str, partition: int) -> str:
    return f"{topic}:{partition}"


def _counters(topic: str) -> str:
    return f"{topic}:next"


def _offset(entry_id: bytes | str) -> int:
    raw = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    return int(raw.split("-", 1)[1])


class StreamShardLog:
    """ShardLog's interface on Redis Streams (see the module doc)."""

    trims = True  # the router may delete records every replica is past

    def __init__(self, url: str, timeout: float = 10.0) -> None:
        import redis

        self.url = url
        self._r = redis.Redis.from_url(url, socket_timeout=timeout)
        self._append = self._r.register_script(APPEND)

    def create_topic(self, topic: str, partitions: int) -> None:
        self._call(
            lambda: self._r.hset(
                _counters(topic), mapping=dict.fromkeys(map(str, range(partitions)), 0)
            )
        )

    def delete_topic(self, topic: str) -> None:
        parts = self._call(lambda: self._r.hkeys(_counters(topic)))
        keys = [_stream(topic, int(p)) for p in parts]
        self._call(lambda: self._r.delete(_counters(topic), f"{topic}:groups", *keys))

    def append(self, topic: str, records: Sequence[tuple[int, str, bytes]]) -> dict[int, int]:
        """Append (partition, key, value) records, each partition's in order; the last offset
        written per partition (Unavailable when Redis did not answer: retry the request)."""
        by_partition: dict[int, list[bytes]] = {}
        for partition, _, value in records:
            by_partition.setdefault(partition, []).append(value)
        done = {}
        for partition, values in by_partition.items():
            keys = [_stream(topic, partition), _counters(topic)]
            last = self._call(lambda k=keys, p=partition, v=values: self._append(k, [p, *v]))
            done[partition] = int(last)
        return done

    def end_offsets(self, topic: str, partitions: int) -> dict[int, int]:
        got = self._call(
            lambda: self._r.hmget(_counters(topic), [str(p) for p in range(partitions)])
        )
        return {p: int(v or 0) for p, v in enumerate(got)}

    def low_water(self, topic: str, partitions: int) -> dict[int, int]:
        """The first offset still held of each partition (its end when all were deleted)."""
        ends = self.end_offsets(topic, partitions)
        out = {}
        for p in range(partitions):
            first = self._call(lambda p=p: self._r.xrange(_stream(topic, p), count=1))
            out[p] = _offset(first[0][0]) if first else ends[p]
        return out

    def trim(self, topic: str, before: dict[int, int]) -> None:
        """Delete the records before offset `before[p]` of each partition p."""
        for p, offset in before.items():
            name = _stream(topic, p)
            self._call(lambda n=name, o=offset: self._r.xtrim(n, minid=f"1-{o}", approximate=False))

    def close(self) -> None:
        self._r.close()

    def _call(self, fn: Any) -> Any:
        import redis

        try:
            return fn()
        except redis.RedisError as exc:
            raise Unavailable(f"the log ({self.url}) did not answer: {exc}: retry") from exc


class StreamPartitionReader:
    """PartitionReader's interface on Redis Streams: one replica's reader of one partition."""

    def __init__(self, url: str, topic: str, partition: int, start: int, group: str) -> None:
        import redis

        self.topic, self.partition, self.group = topic, partition, group
        self._r = redis.Redis.from_url(url, socket_timeout=30)
        self._next = start

    def read(self, max_records: int, timeout: float) -> list[tuple[int, bytes]]:
        """Up to `max_records` (offset, value) pairs from the reader's position on; [] after
        `timeout` seconds; LogTrimmed when records at the position were deleted (also when
        every record was: the topic's counter is past the position, the stream holds none)."""
        out = self._entries(max_records, timeout)
        if not out:
            end = int(self._r.hget(_counters(self.topic), str(self.partition)) or 0)
            if end <= self._next:
                return []
            out = self._entries(max_records, 0.0)  # appended since the first look, or gone
        if not out or out[0][0] != self._next:
            first = f"offsets from {out[0][0]}" if out else "no record"
            raise LogTrimmed(
                f"{self.topic}[{self.partition}] holds {first}, this replica is at "
                f"{self._next}: the records between were deleted; it needs a snapshot"
            )
        self._next = out[-1][0] + 1
        return out

    def _entries(self, max_records: int, timeout: float) -> list[tuple[int, bytes]]:
        after = "0-0" if self._next == 0 else f"1-{self._next - 1}"
        block = int(timeout * 1000) if timeout > 0 else None
        got: Any = self._r.xread({_stream(self.topic, self.partition): after}, max_records, block)
        entries = got[0][1] if got else []
        return [(_offset(entry_id), bytes(fields[b"v"])) for entry_id, fields in entries]

    def commit(self, position: int) -> None:
        """Record `position` under the reader's group, for lag monitoring."""
        self._r.hset(f"{self.topic}:groups", self.group, position)

    def close(self) -> None:
        self._r.close()
