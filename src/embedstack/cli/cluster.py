"""`embedstack cluster up`: a local development cluster on loopback (Ray head + nodes, a
Kafka-protocol log broker, a replicated Redis catalog behind Sentinel); and the cluster side of
`embedstack serve`."""

from __future__ import annotations

import functools
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from embedstack.cli.common import Command, Group, config_option, data_dir_option, load_settings
from embedstack.config import Settings
from embedstack.errors import ConfigError

if TYPE_CHECKING:
    from embedstack.cluster.router import ClusterRouter
    from embedstack.inference.batching.batcher import Batcher


def _ray_init(address: str) -> None:
    """Connect to a Ray cluster: ray://HOST:PORT (Ray Client) or HOST:PORT (the GCS address,
    from a machine of the cluster), or "auto"."""
    import ray

    from embedstack.cluster.ray.node import NAMESPACE

    ray.init(address=address, namespace=NAMESPACE, log_to_driver=False)


def models_factory(settings: Settings) -> Any:
    """What a shard node builds its model registry with (pickled to the node actors)."""
    from embedstack.serving.services import build_models

    return functools.partial(build_models, settings, {})


def build_router(settings: Settings, queue: str, catalog: str) -> Any:
    from embedstack.cluster.catalog import RedisCatalog
    from embedstack.cluster.logs import shard_log
    from embedstack.cluster.ray.nodes import RayNodes
    from embedstack.cluster.router import ClusterRouter

    ack_ms, failover_s = settings.cluster_catalog_ack_ms, settings.cluster_catalog_failover_s
    return ClusterRouter(
        RedisCatalog.from_url(catalog, ack_ms=ack_ms, failover_s=failover_s),
        shard_log(queue, trims=settings.cluster_log_trim),
        RayNodes(),
        models_factory(settings)(),
        settings.default_model,
        replica_timeout=settings.cluster_replica_timeout_s,
    )


def serve_cluster(settings: Settings, address: str, queue: str | None, catalog: str | None) -> None:
    """Run an API node of a cluster until a signal stops it."""
    import uvicorn

    from embedstack.serving.auth import check_bind
    from embedstack.serving.cluster_app import create_cluster_app
    from embedstack.serving.cluster_inference import ServeQueryEmbedder

    if queue is None or catalog is None:
        raise ConfigError(
            "serve --cluster needs --queue kafka://HOST:PORT (the shard log) and --catalog "
            "redis+sentinel://HOST:PORT,.../MASTER/DB or redis://HOST:PORT/DB (the shared "
            "catalog); `embedstack cluster up` prints both"
        )
    check_bind(settings)  # --insecure-no-auth only on loopback, as on single node
    _ray_init(address)
    if "=" in queue:  # REGION=kafka://...,...: an API node of a federation (cli/federation.py)
        from embedstack.cli.federation import serve_federation

        return serve_federation(settings, queue, catalog)
    router = build_router(settings, queue, catalog)
    if settings.insecure_no_auth:
        click.secho(
            f"WARNING: serving WITHOUT authentication on {settings.host}: anyone who can reach "
            "this address is an admin.", fg="red", bold=True, err=True,
        )  # fmt: skip
    elif not router.catalog.keys().has_keys():
        click.secho(
            "no API keys yet: every request will be refused with 401. Create one with "
            f"`embedstack keys create --catalog {catalog} --scope admin`.", fg="yellow", err=True,
        )  # fmt: skip
    router.wait_for_nodes(1, timeout=120)
    router.start()
    embedder = None
    if settings.inference is not None:  # queries through the models' Ray Serve deployments
        embedder = ServeQueryEmbedder(
            router, functools.partial(serve_query_batcher, settings, router)
        )
    try:
        app = create_cluster_app(router, settings, embedder=embedder)
        uvicorn.run(
            app, host=settings.host, port=settings.port, log_level=settings.log_level,
            ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
            ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
        )  # fmt: skip
    finally:
        router.stop()


def serve_query_batcher(settings: Settings, router: ClusterRouter, model: str) -> Batcher:
    """The Serve deployment of `model` on the connected Ray cluster (deployed unless running)."""
    from embedstack.serving.services import batcher_config, serve_batcher

    return serve_batcher(settings, model, router.models.get(model).spec, batcher_config(settings))


@click.group(cls=Group)
def cluster() -> None:
    """Cluster mode on one machine, for development and trying it out.

    `cluster up` starts Ray nodes, a Kafka-protocol log broker and a replicated Redis catalog
    (primary + 2 replicas + 3 Sentinels) on loopback and prints the `embedstack serve
    --cluster ...` command of an API node. Collections are
    split into virtual shards (cluster_shards, default 8) with cluster_replicas (default 2)
    replicas each, placed on nodes by rendezvous hashing. `cluster up --regions eu:2,us:2`
    starts a federation instead: nodes and a broker per region, data kept in its region.
    """


@cluster.command("up", cls=Command)
@click.option("--nodes", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Simulated Ray nodes, each hosting its placed shard replicas.")  # fmt: skip
@click.option("--regions", default=None, metavar="REGION:NODES,...",
              help="Start a federation instead, e.g. eu:2,us:2: per region that many nodes "
              "(labelled embedstack.io/region=REGION), its own Kafka-protocol broker "
              "and a gateway; collections then declare a residency policy and each document's "
              "text, chunks and vectors stay on its region's nodes and broker (README: "
              "Federated regions). Ignores --nodes.")  # fmt: skip
@click.option("--inference", is_flag=True,
              help="Embed through autoscaled Ray Serve deployments on this cluster: the shard "
              "replicas send documents to the bulk lane, and the printed serve command adds "
              "--inference so API nodes send queries there too (one shared inference service "
              "instead of a model in every node).")  # fmt: skip
@click.option("--log", "log_kind", type=click.Choice(["kafka", "redis"]), default="kafka",
              show_default=True,
              help="The shard write log: a Kafka-protocol broker (tansu, in memory: kept whole) "
              "or Redis Streams (a redis-server with an fsync-per-write append-only file; "
              "records every replica is past are deleted: log retention).")  # fmt: skip
@data_dir_option
@config_option
def up(
    nodes: int, regions: str | None, inference: bool, log_kind: str, data_dir: Path | None,
    config: Path | None,
) -> None:  # fmt: skip
    """Start a cluster on this machine, on loopback, until Ctrl-C: a Ray head plus NODES-1
    simulated nodes (ray.cluster_utils), a Kafka-protocol broker (tansu) as the shard write log,
    the catalog as a Redis primary with 2 replicas and 3 Sentinels (every catalog write is
    confirmed by a replica before it is acknowledged, and the catalog survives kill -9 of any
    one of those processes: clients follow the Sentinels to the new primary after a pause of
    a few seconds), and a shard node actor on every node. Prints the `embedstack serve
    --cluster ...` command that starts an API node against it; its --catalog is the
    redis+sentinel://SENTINEL,SENTINEL,SENTINEL/MASTER/DB URL.

    A replica placed on a node that lacks it starts from a snapshot of a live one, sent in
    pieces of cluster_transfer_piece_bytes (8 MiB) with a sha256 check. The log here is kept
    whole: tansu's in-memory engine cannot delete records (log retention needs a Kafka broker
    with DeleteRecords and cluster_log_trim on, or the Redis Streams log of --log redis).

    For trying cluster mode on one machine; production points `serve --cluster` at an existing
    Ray cluster, Kafka and Redis Sentinel (or a plain redis://HOST:PORT/DB, not replicated).
    """
    import ray
    from ray.cluster_utils import Cluster

    from embedstack.cluster.logs import node_address
    from embedstack.cluster.ray.node import node_resource
    from embedstack.cluster.ray.nodes import start_node_actor
    from embedstack.infra.local import start_kafka, start_redis, start_redis_ha
    from embedstack.serving.cluster_inference import ServeEmbed

    settings = load_settings(config, data_dir=data_dir)
    root = settings.data_dir / "cluster"
    if regions is not None:  # a federation (cli/federation.py)
        from embedstack.cli.federation import up_federation

        return up_federation(settings, regions, root)
    if log_kind == "kafka":
        broker = start_kafka(root / "kafka")
        queue = f"kafka://{broker.address}"
    else:
        broker = start_redis(root / "log")
        queue = f"redis://{broker.address}/0"
    redis = start_redis_ha(root / "catalog")
    head = {"num_cpus": 1, "resources": {node_resource("n0"): 1}, "include_dashboard": False}
    local = Cluster(initialize_head=True, head_node_args=head)
    try:
        for i in range(1, nodes):
            local.add_node(num_cpus=1, resources={node_resource(f"n{i}"): 1})
        _ray_init(local.address)
        embed = None
        if inference:
            settings = settings.model_copy(update={"inference": local.address})
            embed = ServeEmbed(settings)
        for i in range(nodes):
            start_node_actor(
                f"n{i}", str(root / "nodes"), node_address(queue), models_factory(settings), embed,
                settings.cluster_transfer_piece_bytes,
            )  # fmt: skip
        catalog = redis.url(0)
        router = build_router(settings, queue, catalog)
        router.wait_for_nodes(nodes, timeout=300)
        click.echo(f"ray: {local.address}\nqueue: {queue}\ncatalog: {catalog}")
        click.echo(  # a development cluster on loopback: no keys, like `make run`
            f"embedstack serve --cluster {local.address} --queue {queue} --catalog {catalog} "
            + (f"--inference {local.address} " if inference else "")
            + "--insecure-no-auth",
        )
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        click.echo(f"cluster up: {nodes} nodes; Ctrl-C stops it", err=True)
        while not stop.wait(1.0):
            pass
    finally:
        ray.shutdown()
        local.shutdown()
        broker.stop()
        redis.stop()
