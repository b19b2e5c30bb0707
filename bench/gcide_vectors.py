"""Real embeddings for benchmarks: the bundled L6 model over deduplicated GCIDE entries, cached.

`~/.cache/embedstack/gcide_l6_{N}.npy` holds (N, 384) float32 unit vectors and
`gcide_l6_{N}.json` the texts they embed (same order). Entries are GCIDE's dictd entries,
deduplicated by text, in a fixed seeded shuffle, first N kept. Both files are written to a temp
name and renamed, so concurrent writers (bench/index.py, bench/query.py) never see a torn file;
the first to finish wins and later ones reuse it.

    python bench/gcide_vectors.py 50000     # compute (about 4-6 min on 2 cores) or reuse
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid
from pathlib import Path

import numpy as np

CACHE = Path.home() / ".cache" / "embedstack"
SHUFFLE_SEED = 0
BATCH = 64


def cache_paths(n: int) -> tuple[Path, Path]:
    return CACHE / f"gcide_l6_{n}.npy", CACHE / f"gcide_l6_{n}.json"


def gcide_texts(n: int) -> list[str]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from corpora import gcide_entries

    seen: dict[str, None] = {}
    for _, text in gcide_entries():
        seen.setdefault(text, None)
    texts = list(seen)
    order = np.random.default_rng(SHUFFLE_SEED).permutation(len(texts))
    if n > len(texts):
        raise SystemExit(f"GCIDE has only {len(texts)} distinct entries; ask for fewer")
    return [texts[i] for i in order[:n]]


def _write_atomically(path: Path, write: object) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "wb") as f:
        write(f)  # type: ignore[operator]
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def embed(texts: list[str]) -> np.ndarray:
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from embedstack.inference.models.variants import sentence_transformer

    model = sentence_transformer()
    order = np.argsort([len(t) for t in texts], kind="stable")  # less padding per batch
    out = np.empty((len(texts), model.spec.dim), dtype=np.float32)
    columns = (
        TextColumn("embedding GCIDE"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
    )
    started = time.perf_counter()
    with Progress(*columns, TimeRemainingColumn()) as bar:
        task = bar.add_task("embed", total=len(texts))
        for start in range(0, len(texts), BATCH):
            rows = order[start : start + BATCH]
            out[rows] = model.embed_batch([texts[i] for i in rows])
            bar.advance(task, len(rows))
    rate = len(texts) / (time.perf_counter() - started)
    print(f"embedded {len(texts)} entries at {rate:.0f} texts/s", file=sys.stderr)
    return out


def load_or_embed(n: int) -> tuple[np.ndarray, list[str]]:
    """The cached (n, 384) vectors and their texts; computed once and cached."""
    vec_path, text_path = cache_paths(n)
    if vec_path.exists() and text_path.exists():
        texts_doc = json.loads(text_path.read_text(encoding="utf-8"))
        texts = texts_doc["texts"] if isinstance(texts_doc, dict) else texts_doc
        return np.load(vec_path, allow_pickle=False), list(texts)
    CACHE.mkdir(parents=True, exist_ok=True)
    texts = gcide_texts(n)
    vecs = embed(texts)
    doc = {"model": "all-MiniLM-L6-v2", "selection": "gcide dedup seeded shuffle", "texts": texts}
    _write_atomically(text_path, lambda f: f.write(json.dumps(doc).encode("utf-8")))
    _write_atomically(vec_path, lambda f: np.save(f, vecs, allow_pickle=False))
    return vecs, texts


if __name__ == "__main__":
    from common import preflight

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 50_000
    if not all(p.exists() for p in cache_paths(n)):
        preflight(imports=("sentence_transformers",), corpora=("gcide",))
    vectors, _ = load_or_embed(n)
    print(f"{vectors.shape} cached at {cache_paths(len(vectors))[0]}")
