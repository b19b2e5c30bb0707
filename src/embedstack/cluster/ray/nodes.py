"""Finding and starting shard node actors on a Ray cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embedstack.cluster.ray.node import NAMESPACE, ShardNode, actor_name, node_resource
from embedstack.cluster.ray.transfer import PIECE_BYTES
from embedstack.inference.backend import ModelRegistry
from embedstack.ingest.pipeline import EmbedFn

PREFIX = actor_name("")


def detached_actor(
    cls: type, name: str, resource: str | None, *args: Any, labels: dict[str, str] | None = None
) -> Any:
    """The detached actor `name` of class `cls` (created once, found by name after), placed on
    a node offering `resource` (and/or carrying the node `labels`), restarted whenever its
    process dies, up to 16 concurrent calls."""
    import ray

    placement: dict[str, Any] = {"resources": {resource: 0.001} if resource else {}}
    if labels:
        placement["label_selector"] = labels
    return (
        ray.remote(cls)
        .options(
            name=name,
            namespace=NAMESPACE,
            lifetime="detached",
            get_if_exists=True,
            max_restarts=-1,
            max_concurrency=16,
            num_cpus=0,
            **placement,
        )
        .remote(*args)
    )


def start_node_actor(
    name: str, data_root: str, bootstrap: str, models_factory: Callable[[], ModelRegistry],
    embed_factory: Callable[[ModelRegistry], EmbedFn] | None = None,
    piece_bytes: int = PIECE_BYTES,
) -> Any:  # fmt: skip
    """The shard node actor of Ray node `name` (which must offer the resource es_node_NAME):
    detached, restarted whenever its process dies, up to 16 concurrent calls (searches run
    while a replica applies its log). `embed_factory`, `piece_bytes`: see ShardNode."""
    return detached_actor(
        ShardNode, actor_name(name), node_resource(name), name, data_root, bootstrap,
        models_factory, embed_factory, piece_bytes,
    )  # fmt: skip


class RayNodes:
    """The shard node actors registered in the Ray cluster, by node name."""

    def __init__(self) -> None:
        self._handles: dict[str, Any] = {}

    def handles(self) -> dict[str, Any]:
        import ray

        names = [
            a["name"]
            for a in ray.util.list_named_actors(all_namespaces=True)
            if a.get("namespace") == NAMESPACE and a["name"].startswith(PREFIX)
        ]
        for actor in names:
            node = actor.removeprefix(PREFIX)
            if node not in self._handles:
                self._handles[node] = ray.get_actor(actor, namespace=NAMESPACE)
        return {n: h for n, h in self._handles.items() if PREFIX + n in names}
