"""The federated side of `embedstack cluster up --regions eu:2,us:2` (a local development
federation: a Kafka-protocol broker per region, nodes carrying their region as a Ray resource,
a gateway per region) and of `embedstack serve --cluster ... --queue eu=kafka://...,us=...`
(an API node of a federation)."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path
from typing import Any

import click

from embedstack.config import Settings
from embedstack.errors import ConfigError, Unavailable

GATEWAY_WAIT_S = 300.0
PREFIX = "embedstack"  # the catalog prefix (RedisCatalog's default)


def start_gateways(
    settings: Settings, brokers: dict[str, str], catalog: str, factory: Any
) -> dict[str, Any]:
    """Each region's gateway actor (found if it runs already), given its region's broker."""
    from embedstack.cluster.log import kafka_bootstrap
    from embedstack.cluster.ray.regions import start_gateway

    timeout, model = settings.cluster_replica_timeout_s, settings.default_model
    out = {}
    for region, url in brokers.items():
        bootstrap = kafka_bootstrap(url)
        out[region] = start_gateway(
            region, catalog, "embedstack", bootstrap, factory, model, timeout
        )
    return out


def wait_gateways(gateways: dict[str, Any], nodes: dict[str, int], timeout: float) -> None:
    """Until each region's gateway sees `nodes[region]` of its nodes (Unavailable after
    `timeout` seconds)."""
    import ray

    deadline = time.monotonic() + timeout
    for region, gateway in gateways.items():
        while True:
            left = max(1.0, deadline - time.monotonic())
            try:
                seen = len(ray.get(gateway.nodes.remote(), timeout=left))
            except Exception as exc:
                raise Unavailable(f"the gateway of region {region} did not start: {exc}") from exc
            if seen >= nodes.get(region, 1):
                break
            if time.monotonic() > deadline:
                raise Unavailable(f"{seen} of {nodes[region]} nodes of region {region} answered")
            time.sleep(0.2)


def build_federation(settings: Settings, queue: str, catalog: str) -> Any:
    """The API node's federated router: gateways of the regions `queue` names (REGION=URL,...)."""
    from embedstack.cli.cluster import models_factory
    from embedstack.cluster.coordination import catalog_client
    from embedstack.cluster.federation import FederatedRouter
    from embedstack.cluster.ray.regions import RegionMap
    from embedstack.cluster.residency import check_region, parse_brokers
    from embedstack.obs.metrics import Metrics

    client = catalog_client(catalog)  # ConfigError for a URL it does not take
    brokers = parse_brokers(queue)
    if settings.region is not None:
        check_region(settings.region, "setting 'region'")
        if settings.region not in brokers:
            raise ConfigError(
                f"region {settings.region!r} (this API node's) has no broker in --queue; "
                f"its regions are {', '.join(brokers)}"
            )
    factory = models_factory(settings)
    gateways = start_gateways(settings, brokers, catalog, factory)  # not waited on: a region
    # that is down makes only what needs it fail (503 naming it), not the API node's start
    return FederatedRouter(
        client, gateways, RegionMap().live_regions,
        factory(), settings.default_model, Metrics(), home=settings.region,
        timeout=settings.region_timeout_s,
    )  # fmt: skip


def serve_federation(settings: Settings, queue: str, catalog: str) -> None:
    """Run an API node of a federation until a signal stops it (Ray is connected already)."""
    import uvicorn

    from embedstack.serving.federation_app import create_federation_app

    router = build_federation(settings, queue, catalog)
    if not settings.insecure_no_auth and not router.keys().has_keys():
        click.secho(
            "no API keys yet: every request will be refused with 401. Create one with "
            f"`embedstack keys create --catalog {catalog} --scope admin`.", fg="yellow", err=True,
        )  # fmt: skip
    app = create_federation_app(router, settings)
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level,
        ssl_certfile=str(settings.tls_cert) if settings.tls_cert else None,
        ssl_keyfile=str(settings.tls_key) if settings.tls_key else None,
    )  # fmt: skip


def up_regions(settings: Settings, layout: dict[str, int], root: Path, started: list[Any]) -> str:
    """Start a local federation: a broker per region, a replicated Redis catalog (primary, 2
    replicas, 3 Sentinels: infra/local.py start_redis_ha), a Ray head plus nodes (node
    `<region><i>` offers es_node_<name> and carries the label embedstack.io/region=<region>),
    a shard node actor on
    every node reading its region's broker, a gateway per region. What it started is appended
    to `started` (the caller stops it, also when this fails); returns the serve command."""
    from ray.cluster_utils import Cluster

    from embedstack.cli.cluster import _ray_init, models_factory
    from embedstack.cluster.ray.node import node_resource
    from embedstack.cluster.ray.nodes import start_node_actor
    from embedstack.cluster.ray.regions import region_labels
    from embedstack.infra.local import start_kafka, start_redis_ha

    brokers = {}
    for region in layout:
        started.append(start_kafka(root / f"kafka-{region}"))
        brokers[region] = started[-1].address
    catalog_ha = start_redis_ha(root / "catalog")
    started.append(catalog_ha)
    catalog = catalog_ha.url(0)
    names = [(region, f"{region}{i}") for region, n in layout.items() for i in range(n)]

    def node(region: str, name: str) -> dict[str, Any]:
        return {"num_cpus": 1, "resources": {node_resource(name): 1},
                "labels": region_labels(region)}  # fmt: skip

    local = Cluster(initialize_head=True, head_node_args={**node(*names[0]),
                                                          "include_dashboard": False})  # fmt: skip
    started.append(local)
    for region, name in names[1:]:
        local.add_node(**node(region, name))
    _ray_init(local.address)
    factory = models_factory(settings)
    for region, name in names:  # a node reads its own region's broker only
        start_node_actor(name, str(root / "nodes"), brokers[region], factory)
    urls = {r: f"kafka://{address}" for r, address in brokers.items()}
    wait_gateways(start_gateways(settings, urls, catalog, factory), layout, GATEWAY_WAIT_S)
    queue = ",".join(f"{r}={url}" for r, url in urls.items())
    return (
        f"embedstack serve --cluster {local.address} --queue {queue} --catalog {catalog} "
        "--insecure-no-auth"
    )


def up_federation(settings: Settings, spec: str, root: Path) -> None:
    """`cluster up --regions`: a local federation until Ctrl-C."""
    import ray

    from embedstack.cluster.residency import parse_layout

    layout = parse_layout(spec)
    started: list[Any] = []  # brokers, redis, the Ray cluster: stopped in reverse
    try:
        click.echo(up_regions(settings, layout, root, started))
        stop = threading.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())
        shape = ", ".join(f"{r}: {n} nodes" for r, n in layout.items())
        click.echo(f"federation up ({shape}); Ctrl-C stops it", err=True)
        while not stop.wait(1.0):
            pass
    finally:
        ray.shutdown()
        for item in reversed(started):
            item.shutdown() if hasattr(item, "shutdown") else item.stop()
