"""Finding and starting shard node actors on a Ray cluster."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from embedstack.cluster.ray.node import NAMESPACE, ShardNode, actor_name, node_resource
from embedstack.inference.backend import ModelRegistry

PREFIX = actor_name("")


def start_node_actor(
    name: str, data_root: str, bootstrap: str, models_factory: Callable[[], ModelRegistry]
) -> Any:
    """The shard node actor of Ray node `name` (which must offer the resource es_node_NAME):
    detached, restarted whenever its process dies, up to 16 concurrent calls (searches run
    while a replica applies its log)."""
    import ray

    cls = ray.remote(ShardNode)
    return cls.options(
        name=actor_name(name),
        namespace=NAMESPACE,
        lifetime="detached",
        get_if_exists=True,
        max_restarts=-1,
        max_concurrency=16,
        num_cpus=0,
        resources={node_resource(name): 0.001},
    ).remote(name, data_root, bootstrap, models_factory)


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
