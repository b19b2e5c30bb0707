"""Query embedding on a cluster API node through the shared inference service
(`embedstack serve --cluster ADDRESS --inference ADDRESS`): the models' Ray Serve deployments
(inference/serve_ray.py, autoscaled replicas with the single-node batcher inside) embed the query
text instead of a model in the API node's process. The API node still loads the model for its
spec (the model/space parity check) as a single node with --inference does for its tokenizer;
the forward passes run in the deployment. Without --inference the router embeds locally.

`ServeEmbed` does the same for the write path: shard node actors started with it (`cluster up
--inference`) embed their log's documents through the bulk lane of the same deployments, so
queries go ahead of bulk work inside every inference replica."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Sequence

import numpy as np

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.router import ClusterRouter
from embedstack.config import Settings
from embedstack.inference.backend import ModelRegistry
from embedstack.inference.batching.batcher import Batcher
from embedstack.ingest.pipeline import EmbedFn


class ServeQueryEmbedder:
    """Query vectors from a Batcher per model made by `make` (a ServeBatcher: deployed on the
    cluster's Ray on first use, or found running and reused; or a local Batcher, see
    `local_embedder`), query lane."""

    def __init__(self, router: ClusterRouter, make: Callable[[str], Batcher]) -> None:
        self._router = router
        self._make = make
        self._batchers: dict[str, Batcher] = {}
        self._lock = asyncio.Lock()

    async def _batcher(self, model: str) -> Batcher:
        async with self._lock:
            found = self._batchers.get(model)
            if found is None or found.failure() is not None:
                found = await asyncio.to_thread(self._make, model)  # blocks until a replica runs
                await found.start()
                self._batchers[model] = found
            return found

    async def embed(
        self, coll: ClusterCollection, text: str, space_id: str | None, deadline: float | None
    ) -> np.ndarray:
        """The query in the serving (or named) space, parity checked here, embedded by the
        space's model deployment."""
        _, model = await asyncio.to_thread(self._router.query_model, coll, space_id)
        vectors, _ = await self.embed_texts(model, [text], deadline)
        return np.asarray(vectors[0], np.float32)

    async def embed_texts(
        self, model: str, texts: Sequence[str], deadline: float | None
    ) -> tuple[np.ndarray, int]:
        """Texts embedded by `model`'s batcher in the query lane (POST /v1/embeddings, as single
        node embeds them): vectors and the tokens read; Overloaded (429) past its admission."""
        batcher = await self._batcher(model)
        return await batcher.embed_counted(list(texts), "query", deadline)

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()


def local_embedder(router: ClusterRouter, settings: Settings) -> ServeQueryEmbedder:
    """An API node's own models behind the single-node Batcher (its admission: Overloaded, 429,
    past max_pending), for an API node without the shared inference service."""
    from embedstack.serving.services import batcher_config

    def make(model: str) -> Batcher:
        return Batcher(router.models.get(model), batcher_config(settings))

    return ServeQueryEmbedder(router, make)


class ServeEmbed:
    """An embed factory for shard node actors (ShardNode's `embed_factory`; picklable, it
    travels to the node): given the node's models, an EmbedFn that sends texts to the bulk lane
    of the model's Ray Serve deployment on the node's Ray cluster (deployed with `settings` on
    first use unless it runs). Overloaded crosses back as Overloaded, which the indexer waits
    out, so an acknowledged document is never failed for the service's limits."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings

    def __call__(self, models: ModelRegistry) -> EmbedFn:
        from embedstack.serving.services import batcher_config, serve_batcher

        settings = self._settings
        batchers: dict[str, Batcher] = {}
        lock = threading.Lock()  # replicas of the node apply their logs in their own threads

        def batcher(model: str) -> Batcher:
            with lock:
                found = batchers.get(model)
                if found is None:
                    spec = models.get(model).spec
                    found = serve_batcher(settings, model, spec, batcher_config(settings))
                    batchers[model] = found
                return found

        async def embed(model: str, texts: Sequence[str]) -> np.ndarray:
            b = await asyncio.to_thread(batcher, model)  # deploying blocks until a replica runs
            vectors, _ = await b.embed_counted(list(texts), "bulk")
            return vectors

        return embed
