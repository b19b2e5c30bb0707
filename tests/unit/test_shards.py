"""Virtual shards: a stable document hash and rendezvous placement that moves only what must."""

from __future__ import annotations

import pytest

from embedstack.cluster.shards import moved_shards, moves, place, shard_of
from embedstack.errors import Unavailable


def test_shard_of_is_stable_and_spread() -> None:
    # pinned values: a change of hash would silently re-home every stored document
    assert [shard_of(x, 8) for x in ("a", "b", "doc-1", "doc-2")] == [4, 4, 5, 7]
    counts = [0] * 8
    for i in range(8000):
        counts[shard_of(f"doc-{i}", 8)] += 1
    assert min(counts) > 850 and max(counts) < 1150, counts


def test_placement_replicas_on_distinct_nodes() -> None:
    p = place(16, ["n1", "n2", "n3"], 2)
    assert set(p) == set(range(16))
    for nodes in p.values():
        assert len(nodes) == 2 and len(set(nodes)) == 2
    # order of the node list does not matter
    assert p == place(16, ["n3", "n1", "n2"], 2)
    # fewer nodes than replicas: every node holds the shard once
    assert all(len(v) == 1 for v in place(4, ["n1"], 2).values())


def test_adding_a_node_moves_only_reassigned_shards() -> None:
    nodes = [f"n{i}" for i in range(4)]
    before = place(64, nodes, 2)
    after = place(64, [*nodes, "n4"], 2)
    # every new replica lands on the new node; nothing moves between old nodes
    for s in after:
        for n in set(after[s]) - set(before[s]):
            assert n == "n4"
    built = moves(before, after)
    # the new node takes about its fair share (2 x 64 / 5 ~ 25.6 replicas), not a reshuffle
    assert 15 <= built <= 37, built
    assert moved_shards(before, after) == built  # one new replica per changed shard
    # modulo placement would move most shards; rendezvous moves under half of them
    assert moved_shards(before, after) < 32


def test_removing_a_node_moves_only_its_shards() -> None:
    nodes = ["n1", "n2", "n3", "n4"]
    before = place(32, nodes, 2)
    after = place(32, ["n1", "n2", "n4"], 2)
    held = {s for s, v in before.items() if "n3" in v}
    assert {s for s in after if set(after[s]) != set(before[s])} == held
    assert moves(before, after) == len(held)


def test_no_nodes_is_unavailable() -> None:
    with pytest.raises(Unavailable):
        place(4, [], 2)
