"""How honest is the recall gate? Its self-test queries against real held-out queries.

The index gate (src/embedstack/index/gate.py) tunes knobs on leave-one-out samples of the indexed
vectors. A user measured ivf_flat recall@10 0.883 on 200 held-out paragraphs over 6,000 indexed
ones, under the floor 0.9 the gate claimed to meet. This script builds ivf_flat over N real
embeddings (GCIDE entries, bundled all-MiniLM-L6-v2, cached by bench/gcide_vectors.py), holds out
200 entries as queries, and for each nprobe prints recall@10 of:
  held-out     the real thing: entries that are not in the index
  leave-1-out  the old gate's queries (indexed vectors, own id dropped)
  mixes        gate.neighbour_mixes: indexed vectors moved 30-50% towards a neighbour
  noisy        gate.noisy_copies: indexed vectors plus a random offset of the median NN distance
and then what the gate picks (floor 0.9) and the held-out recall at its pick.

    python bench/gate_margin.py [--n 6000] [--queries 200]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gcide_vectors as gv
from common import load_note, say, table
from embedstack.index.common import brute_force
from embedstack.index.factory import create_index
from embedstack.index.gate import (
    GATE_K,
    GATE_QUERIES,
    _truth,
    leave_one_out_recall,
    neighbour_mixes,
    noisy_copies,
    plain_recall,
    recall_at_k,
)


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--n", type=int, default=6000, help="indexed vectors (default 6000)")
    p.add_argument("--queries", type=int, default=200, help="held-out queries (default 200)")
    p.add_argument("--seeds", type=int, default=3, help="held-out splits averaged (default 3)")
    args = p.parse_args()
    say(f"bench/gate_margin.py {' '.join(sys.argv[1:])}\n{load_note()}")
    all_vecs, _ = gv.load_or_embed(args.n + args.queries)
    all_vecs = np.ascontiguousarray(all_vecs, dtype=np.float32)
    probes = (1, 2, 4, 8, 16, 32)
    sums: dict[tuple[str, int], float] = {}
    picks = []
    for seed in range(args.seeds):
        order = np.random.default_rng(seed).permutation(len(all_vecs))
        base, held = all_vecs[order[: args.n]], all_vecs[order[args.n :]]
        ids = np.arange(args.n, dtype=np.int64)
        index = create_index("ivf_flat", base.shape[1], "cosine", {"recall_floor": 0.9})
        index.add(ids, base)
        picks.append((index.gate, _held_recall(index, base, ids, held, index.knobs)))
        rows = np.random.default_rng(seed).choice(args.n, GATE_QUERIES, replace=False)
        loo_truth = _truth(base, ids, rows, "cosine")
        scale = float(np.median(np.linalg.norm(base[rows] - base[loo_truth[:, 0]], axis=1)))
        sets = {
            "mixes": neighbour_mixes(base, rows, loo_truth, "cosine", seed),
            "noisy": noisy_copies(base, rows, scale, "cosine", seed),
        }
        truths = {name: brute_force(base, ids, q, GATE_K, "cosine")[1] for name, q in sets.items()}

        def search(q: np.ndarray, k: int, knobs: dict[str, int], index: Any = index) -> np.ndarray:
            out: np.ndarray = index.search(q, k, **knobs)[1]
            return out

        for nprobe in probes:
            knobs = {"nprobe": nprobe}
            got = {
                "held-out": _held_recall(index, base, ids, held, knobs),
                "leave-1-out": leave_one_out_recall(
                    search, knobs, base[rows], ids[rows], loo_truth
                ),
                **{name: plain_recall(search, knobs, q, truths[name]) for name, q in sets.items()},
            }
            for name, value in got.items():
                sums[(name, nprobe)] = sums.get((name, nprobe), 0.0) + value / args.seeds
    names = ("held-out", "leave-1-out", "mixes", "noisy")
    rows_out = [[nprobe, *(sums[(name, nprobe)] for name in names)] for nprobe in probes]
    table(f"ivf_flat recall@10, {args.n} GCIDE vectors, mean of {args.seeds} splits",
          ["nprobe", *names], rows_out)  # fmt: skip
    for gate, held in picks:
        say(f"gate (floor 0.9): {gate} -> held-out recall@10 at its knobs {held:.3f}")
    say(load_note())


def _held_recall(index: object, base: np.ndarray, ids: np.ndarray, held: np.ndarray,
                 knobs: dict[str, int]) -> float:  # fmt: skip
    truth = brute_force(base, ids, held, GATE_K, "cosine")[1]
    found = index.search(held, GATE_K, **knobs)[1]  # type: ignore[attr-defined]
    return recall_at_k(found, truth, GATE_K)


if __name__ == "__main__":
    main()
