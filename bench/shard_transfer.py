"""Shard transfer memory: a real shard replica's store sent in pieces (cluster/ray/transfer.py)
against the one-object way it replaced (the whole store image in memory), in the same run.

Builds a replica of --docs documents (hashing model, so the store is mostly text, chunks and
vectors), then copies its snapshot both ways through the same Outgoing (no Ray: the piece
calls are direct, what travels between nodes is the same bytes) and reports the Python heap
peak of each (tracemalloc: file reads and the image bytes are heap objects) and the time.

    python bench/shard_transfer.py --docs 4000 --piece-kib 8192
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import say, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=4000)
    parser.add_argument("--piece-kib", type=int, default=8192)
    args = parser.parse_args()

    from embedstack.cluster.catalog import ClusterCollection
    from embedstack.cluster.log import LogRecord
    from embedstack.cluster.ray.transfer import Outgoing, receive
    from embedstack.cluster.replica import ShardReplica
    from embedstack.config import Settings
    from embedstack.fsutil import atomic_write
    from embedstack.ingest.chunking import content_hash
    from embedstack.registry.collections import CollectionConfigs
    from embedstack.serving.services import build_models
    from embedstack.storage.store import DocumentRow

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        settings = Settings(enable_test_models=True, default_model="hashing-test", data_dir=root)
        models = build_models(settings, {})
        config, space = CollectionConfigs(models, "hashing-test").config_for("docs")
        coll = ClusterCollection("docs", config, space, time.time(), "t", 1, 1)
        source = ShardReplica(root / "source", coll, 0, models)
        rng = random.Random(0)
        started = time.monotonic()
        for offset, first in enumerate(range(0, args.docs, 200)):
            rows = []
            for i in range(first, min(first + 200, args.docs)):
                text = " ".join(f"w{rng.randrange(20000)}" for _ in range(300))
                rows.append(DocumentRow(f"d{i}", text, {"i": i}, content_hash(text, {"i": i})))
            source.apply([(offset, LogRecord("put", tuple(rows)).encode())])
        say(f"built a replica of {args.docs} documents in {time.monotonic() - started:.0f} s")
        outgoing = Outgoing(root / "outgoing")

        def call(method: str, *a: Any) -> Any:
            if method == "snapshot_open":
                return outgoing.open(source)
            return getattr(outgoing, method.removeprefix("snapshot_"))(*a)

        def pieces() -> dict[str, Any]:
            return receive(call, "docs", 0, root / "pieces", args.piece_kib << 10)

        def one_object() -> dict[str, Any]:  # the replaced way: the image as one bytes object
            info = outgoing.open(source)
            image = (outgoing._open[info["id"]].path).read_bytes()
            outgoing.close(info["id"])
            (root / "whole").mkdir(exist_ok=True)
            atomic_write(root / "whole" / "store.db", image)
            return {"bytes": len(image), "pieces": 1}

        rows_out = []
        for name, way in (("one object (before)", one_object), ("pieces (now)", pieces)):
            tracemalloc.start()
            tracemalloc.reset_peak()
            t0 = time.monotonic()
            got = way()
            seconds = time.monotonic() - t0
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
            rows_out.append((name, got["bytes"] >> 20, got["pieces"], peak >> 20, seconds))
        source.close()
    base = rows_out[0][3] or 1
    table(
        f"shard transfer of one replica ({args.docs} docs), load {os.getloadavg()[0]:.1f}",
        ["way", "store MiB", "pieces", "heap peak MiB", "seconds"],
        rows_out,
    )
    say(f"heap peak, pieces / one object: {rows_out[1][3] / base:.3f}")


if __name__ == "__main__":
    main()
