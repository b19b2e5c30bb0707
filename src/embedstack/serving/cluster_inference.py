"""Query embedding on a cluster API node through the shared inference service
(`embedstack serve --cluster ADDRESS --inference ADDRESS`): the models' Ray Serve deployments
(inference/serve_ray.py, autoscaled replicas with the single-node batcher inside) embed the query
text instead of a model in the API node's process. The API node still loads the model for its
spec (the model/space parity check) as a single node with --inference does for its tokenizer;
the forward passes run in the deployment. Without --inference the router embeds locally."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np

from embedstack.cluster.catalog import ClusterCollection
from embedstack.cluster.router import ClusterRouter
from embedstack.inference.batching.batcher import Batcher


class ServeQueryEmbedder:
    """Query vectors from a Batcher per model made by `make` (a ServeBatcher: deployed on the
    cluster's Ray on first use, or found running and reused), query lane."""

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
        batcher = await self._batcher(model)
        vectors, _ = await batcher.embed_counted([text], "query", deadline)
        return np.asarray(vectors[0], np.float32)

    async def stop(self) -> None:
        for batcher in self._batchers.values():
            await batcher.stop()
