"""The write path's baseline: the engine the server picks, run in this process on the same chunks.

`Engine.like_server(env)` builds the model as `embedstack serve` does with that environment: the
same Settings (load_settings, which also sets torch threads), the same model registry
(build_models) and so the same `auto` backend (the cached gate and speed race of this machine).
`Engine.seconds` embeds chunk texts through the server's own Batcher (the server's
BatcherConfig) in the groups a server ingest worker submits (worker_groups): per POST of `job`
documents, `ingest_batch_documents` documents at a time, their new chunk texts in embed calls of
the worker's `embed_batch` texts with at most `embed_concurrency` in flight. So both sides run
the same engine on the same batches; what the write path adds over this is HTTP, the durable
queue, chunking, the store, the index, and any time the model waits for them.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from common import batched
from embedstack.cli.common import load_settings
from embedstack.config import Settings
from embedstack.inference.backend import Embedder, ModelRegistry
from embedstack.inference.batching.batcher import Batcher
from embedstack.ingest.chunking import chunk_texts
from embedstack.obs.metrics import Metrics
from embedstack.serving.services import batcher_config, build_models, worker_config
from embedstack.types import ChunkingSpec


@contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """os.environ replaced by `env` for the duration (Settings read the environment)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@dataclass
class Engine:
    settings: Settings
    models: ModelRegistry
    embedder: Embedder

    @classmethod
    def like_server(cls, env: Mapping[str, str]) -> Engine:
        """The default model as a server started with environment `env` serves it."""
        with environment(env):
            settings = load_settings(None)
        models = build_models(settings, env)
        return cls(settings, models, models.get(settings.default_model))

    def close(self) -> None:
        self.models.close()

    def worker_groups(
        self, docs: Sequence[tuple[str, str]], spec: ChunkingSpec, job: int, seen: set[str]
    ) -> list[list[str]]:
        """The chunk texts a server worker embeds together, group by group, for `docs` POSTed
        `job` documents at a time: texts in `seen` (embedded before: the worker reuses their
        vectors) are left out, and `seen` takes the new ones."""
        step = worker_config(self.settings).batch_documents
        tokenizer = self.embedder.tokenizer
        out = []
        for posted in batched(docs, job):
            for group in batched(posted, step):
                chunked = chunk_texts(group, tokenizer, spec)
                texts = [t for t in dict.fromkeys(c.text for cs in chunked for c in cs)
                         if t not in seen]  # fmt: skip
                seen.update(texts)
                out.append(texts)
        return out

    def seconds(self, groups: Sequence[Sequence[str]]) -> tuple[float, float, float]:
        """Wall seconds to embed `groups` one after another through the server's batcher, the
        model's forward seconds within them (the batcher's inference-duration sum), and the
        CPU seconds this process used meanwhile (all its threads)."""
        started, cpu = time.perf_counter(), time.process_time()
        forward = asyncio.run(self._embed(groups))
        return time.perf_counter() - started, forward, time.process_time() - cpu

    async def _embed(self, groups: Sequence[Sequence[str]]) -> float:
        metrics = Metrics()
        batcher = Batcher(self.embedder, batcher_config(self.settings), metrics)
        worker = worker_config(self.settings)
        gate = asyncio.Semaphore(max(1, worker.embed_concurrency))
        step = max(1, worker.embed_batch)

        async def piece(texts: Sequence[str]) -> None:
            async with gate:
                await batcher.embed(texts, "bulk")

        await batcher.start()
        try:
            for texts in groups:
                await asyncio.gather(*(piece(part) for part in batched(texts, step)))
        finally:
            await batcher.stop()
        total = metrics.registry.get_sample_value(
            "embedstack_inference_duration_seconds_sum", {"model": self.embedder.spec.name}
        )
        return total or 0.0
