"""Virtual shards and their placement on nodes.

A document belongs to one of a collection's `shards` virtual shards by a stable hash of its id
(never modulo the node count). Shards are placed on nodes by rendezvous (highest random weight)
hashing: each (shard, node) pair gets a stable score and a shard's replicas are its `replicas`
best-scoring live nodes. Adding or removing a node therefore only moves the shards whose top
choices include that node; every other shard keeps its owners.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence

from embedstack.errors import InvalidInput, Unavailable

MAX_SHARDS = 1024

Placement = dict[int, tuple[str, ...]]  # shard -> replica nodes, best first


def _h64(*parts: str) -> int:
    digest = hashlib.blake2b("\x1f".join(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def shard_of(document_id: str, shards: int) -> int:
    """The virtual shard of a document id: stable across processes, machines and versions."""
    return _h64("doc", document_id) % shards


def check_layout(shards: int, replicas: int) -> None:
    if not 1 <= shards <= MAX_SHARDS:
        raise InvalidInput(f"'shards' must be from 1 to {MAX_SHARDS}, not {shards}")
    if replicas < 1:
        raise InvalidInput(f"'replicas' must be at least 1, not {replicas}")


def place(shards: int, nodes: Iterable[str], replicas: int, salt: str = "") -> Placement:
    """Each shard's `replicas` nodes by rendezvous hashing (fewer when there are fewer nodes);
    `salt` (a collection's log topic) spreads different collections' shards differently."""
    live = sorted(set(nodes))
    if not live:
        raise Unavailable("no live cluster node to place shards on: start a node")
    out: Placement = {}
    for shard in range(shards):
        ranked = sorted(live, key=lambda n: _h64("place", salt, str(shard), n), reverse=True)
        out[shard] = tuple(ranked[:replicas])
    return out


def moves(before: Mapping[int, Sequence[str]], after: Mapping[int, Sequence[str]]) -> int:
    """Shard replicas that must be built somewhere new: (shard, node) pairs in `after` only."""
    return sum(len(set(after[s]) - set(before.get(s, ()))) for s in after)


def moved_shards(before: Mapping[int, Sequence[str]], after: Mapping[int, Sequence[str]]) -> int:
    """Shards whose replica set changed at all."""
    return sum(1 for s in after if set(after[s]) != set(before.get(s, ())))
