"""The store's write path with and without the lexical index: `Store.write_chunks` chunks/s for a
collection with lexical on (FTS5 triggers, the default), on with a title field, and off
(`"lexical": false`), rounds interleaved in one run so load hits each alike.

    python bench/lexical_write.py --docs 2000 --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import load_note
from embedstack.storage.store import ChunkRow, DocumentChunks, DocumentRow, Store
from embedstack.types import CollectionConfig, IndexSpec

VARIANTS = {
    "lexical on": {"lexical": True, "lexical_fields": ()},
    "lexical on + title": {"lexical": True},
    "lexical off": {"lexical": False},
}


def run(store: Store, name: str, docs: int, chunks_per_doc: int, seed: int) -> float:
    """Chunks/s of one collection's write: documents stored first, then their chunks."""
    rng = random.Random(seed)
    vec = np.zeros(384, np.float32).tobytes()
    rows, batches = [], []
    for d in range(docs):
        texts = [" ".join(f"w{rng.randrange(20_000)}" for _ in range(60)) for _ in range(8)]
        rows.append(DocumentRow(f"d{d}", " ".join(texts), {"title": f"doc {d}"}, f"h{d}"))
        chunks = [ChunkRow(i, t, 0, 1, 60, f"{d}-{i}", vec) for i, t in enumerate(texts)]
        batches.append(DocumentChunks(f"d{d}", f"h{d}", chunks[:chunks_per_doc]))
    store.put_documents(name, rows)
    started = time.perf_counter()
    for i in range(0, len(batches), 64):  # the worker's write batch
        store.write_chunks(name, "sp", batches[i : i + 64])
    return docs * chunks_per_doc / (time.perf_counter() - started)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--chunks-per-doc", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    print(load_note())
    rates: dict[str, list[float]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="lexical-write-") as tmp:
        store = Store(Path(tmp) / "store.db")
        for r in range(args.rounds):
            for v, extra in VARIANTS.items():
                name = f"{v.replace(' ', '_').replace('+', 'and')}_{r}"
                store.create_collection(
                    name, CollectionConfig(384, "cosine", IndexSpec("flat"), **extra), "sp"
                )
                rates[v].append(run(store, name, args.docs, args.chunks_per_doc, r))
        store.close()
    base = statistics.median(rates["lexical on"])
    for v, got in rates.items():
        med = statistics.median(got)
        print(f"{v:<20} {med:>9,.0f} chunks/s (median of {len(got)})  x{med / base:.2f} of on")
    print(load_note())


if __name__ == "__main__":
    main()
