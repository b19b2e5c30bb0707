"""`embedstack serve | worker`: the HTTP server, and ingest workers as their own process."""

from __future__ import annotations

import asyncio
import ctypes
import os
import signal
from pathlib import Path

import click

from embedstack.cli.common import (
    Command,
    config_option,
    data_dir_option,
    load_settings,
    setting_default,
)
from embedstack.config import ENV_PREFIX
from embedstack.errors import ConfigError

WORKER_CONCURRENCY = 1  # a worker process's own count: the server's `workers` setting may be 0


@click.command(cls=Command)
@click.option("--host", default=None,
              help=f"Address to listen on (default: {ENV_PREFIX}HOST, else "
              f"{setting_default('host')}).")  # fmt: skip
@click.option("--port", type=int, default=None,
              help=f"Port to listen on (default: {ENV_PREFIX}PORT, else "
              f"{setting_default('port')}).")  # fmt: skip
@data_dir_option
@click.option("--workers", type=int, default=None,
              help=f"In-process ingest workers (default: {ENV_PREFIX}WORKERS, else "
              f"{setting_default('workers')}).")  # fmt: skip
@click.option("--queue", "queue", default=None, metavar="URL",
              help="Job queue: sqlite (embedded, the default), kafka://HOST:PORT or "
              "redis://HOST:PORT (forms listed above; default: "
              f"{ENV_PREFIX}QUEUE, else {setting_default('queue')}). With --cluster: the shard "
              "write log, kafka://HOST:PORT.")  # fmt: skip
@click.option("--insecure-no-auth", is_flag=True, default=None,
              help="Serve without API keys (every caller is an admin of the default tenant). "
              "Allowed only on a loopback address; for trying things out.")  # fmt: skip
@click.option("--tls-cert", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM certificate (chain) file: serve HTTPS (with --tls-key).")  # fmt: skip
@click.option("--tls-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM private key file of --tls-cert.")  # fmt: skip
@click.option("--cluster", "cluster_address", default=None, metavar="ADDRESS",
              help="Serve as an API node of a cluster: the Ray address (ray://HOST:PORT for "
              "Ray Client, HOST:PORT for the GCS address); needs --queue and --catalog. "
              "`embedstack cluster up` starts a local one.")  # fmt: skip
@click.option("--catalog", "catalog_url", default=None, metavar="URL",
              help="With --cluster: the shared catalog, redis+sentinel://HOST:PORT,HOST:PORT,"
              "HOST:PORT/MASTER/DB (a primary and replicas behind Sentinel: survives the loss "
              "of any one process) or redis://HOST:PORT/DB (one server, development).")  # fmt: skip
@click.option("--inference", "inference", default=None, metavar="ADDRESS",
              help="Run the models as an autoscaled Ray Serve deployment on this Ray cluster "
              "(ray://HOST:PORT for Ray Client, HOST:PORT for the GCS address) instead of in "
              "this process; replicas, targets and delays are the inference_* settings "
              f"(default: {ENV_PREFIX}INFERENCE, else in process). With --cluster (the same "
              "address): the API node embeds queries through that deployment.")  # fmt: skip
@config_option
def serve(
    host: str | None, port: int | None, data_dir: Path | None, workers: int | None,
    queue: str | None, insecure_no_auth: bool | None, tls_cert: Path | None, tls_key: Path | None,
    cluster_address: str | None, catalog_url: str | None, inference: str | None,
    config: Path | None,
) -> None:  # fmt: skip
    """Run the HTTP server with in-process ingest workers.

    Loads the bundled all-MiniLM-L6-v2 model, opens every collection's index (from its snapshot
    plus the store's later changes) and serves the API; see /docs for it. A setting this
    machine cannot honour stops it at startup with one line saying which.

    Every request needs an API key (`embedstack keys create`) unless --insecure-no-auth is
    given, which only a loopback address allows.

    \b
    --queue URL picks where ingest jobs wait:
      sqlite                     embedded, DATA_DIR/queue.db (default)
      kafka://HOST:PORT[,...][?topic=embedstack-jobs&group=embedstack&partitions=4]
                                 a Kafka-protocol broker (job state: DATA_DIR/kafka-TOPIC.db)
      redis://HOST:PORT[/DB][?name=embedstack]
                                 Redis Streams (rediss:// for TLS)
    Worker processes (`embedstack worker`) must use the same URL and data dir.

    --inference ADDRESS runs each model as a Ray Serve deployment whose replicas Ray Serve
    scales between inference_min_replicas and inference_max_replicas (EMBEDSTACK_INFERENCE_*):
    on ongoing requests per replica, queued texts per replica, and GPU utilization where the
    replicas have a GPU. When even the maximum is full, requests get 429 with Retry-After.
    Bulk work (ingest) runs in replicas of its own, scaled between inference_bulk_min_replicas
    and inference_bulk_max_replicas (0: shares the query replicas), so queries never queue
    behind it; each caller sends at most inference_bulk_in_flight bulk requests at once.
    """
    from embedstack.serving.app import create_app
    from embedstack.serving.auth import check_bind, is_loopback
    from embedstack.serving.server import run_server
    from embedstack.serving.services import Services

    settings = load_settings(
        config, host=host, port=port, data_dir=data_dir, workers=workers, queue=queue,
        insecure_no_auth=insecure_no_auth, tls_cert=tls_cert, tls_key=tls_key,
        inference=inference,
    )  # fmt: skip
    if cluster_address is not None:
        if settings.inference is not None and settings.inference != cluster_address:
            raise ConfigError(
                f"--inference {settings.inference} is not the --cluster address "
                f"{cluster_address}: an API node embeds queries through the Ray Serve "
                "deployment of the cluster it is connected to; pass the same address to both"
            )
        from embedstack.cli.cluster import serve_cluster

        return serve_cluster(settings, cluster_address, queue, catalog_url)
    check_bind(settings)
    ignore_file_size_signal()
    bound_heap()
    services = Services.build(settings)
    if settings.insecure_no_auth:
        click.secho(
            f"WARNING: serving WITHOUT authentication on {settings.host}: anyone who can reach "
            "this address is an admin. Use API keys (`embedstack keys create`) for anything "
            "beyond a trial.", fg="red", bold=True, err=True,
        )  # fmt: skip
    elif not is_loopback(settings.host) and settings.tls_cert is None:
        click.secho(
            f"WARNING: API keys will cross the network in clear text on {settings.host}: serve "
            "HTTPS with --tls-cert/--tls-key, or put a TLS-terminating proxy in front.",
            fg="yellow", err=True,
        )  # fmt: skip
    if not settings.insecure_no_auth and not services.store.has_keys():
        click.secho(
            "no API keys yet: every request will be refused with 401. Create one with "
            f"`embedstack keys create --data-dir {settings.data_dir} --scope admin`.",
            fg="yellow", err=True,
        )  # fmt: skip
    app = create_app(services)
    tls = None
    if settings.tls_cert is not None and settings.tls_key is not None:
        tls = (str(settings.tls_cert), str(settings.tls_key))
    run_server(services, app, settings.host, settings.port, settings.log_level, tls)


# glibc mallopt parameters (malloc.h)
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
MMAP_THRESHOLD = 1 << 20


def bound_heap() -> None:
    """Keep freed memory from piling up in the heap (glibc; elsewhere nothing changes).

    glibc raises its mmap threshold to the size of each large block freed (up to 32 MiB), so
    after the first bulk upload every later vector buffer (20,000 x 384 float32 = 30 MiB) and
    its copies come from the heap arenas, which keep their pages after free; one arena per
    thread, up to 8 per core. A fixed 1 MiB threshold keeps large blocks mmapped (given back at
    free) and one arena per core bounds the rest. Measured loading 1M x 384 into ivf_pq
    (bench/ten_million.py --n 1000000): RSS after the load 1,407 -> 1,121 MiB, peak 1,722 ->
    1,322 MiB against a planned 964 MiB. A MALLOC_* or GLIBC_TUNABLES setting of the user's
    own wins."""
    if any(k.startswith("MALLOC_") or k == "GLIBC_TUNABLES" for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    mallopt = getattr(libc, "mallopt", None)
    if mallopt is None:
        return
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)
    mallopt(M_ARENA_MAX, max(1, os.cpu_count() or 1))


def ignore_file_size_signal() -> None:
    """A write past a file-size limit (RLIMIT_FSIZE) then fails with EFBIG, which the store
    reports as InsufficientStorage, instead of SIGXFSZ killing the process."""
    if hasattr(signal, "SIGXFSZ"):
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)


@click.command(cls=Command)
@data_dir_option
@click.option("--queue", "queue", default=None, metavar="URL",
              help="Job queue: sqlite (embedded, the default), kafka://HOST:PORT or "
              "redis://HOST:PORT (the server's, see `embedstack serve --help`; default: "
              f"{ENV_PREFIX}QUEUE, else {setting_default('queue')}).")  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1), default=WORKER_CONCURRENCY,
              show_default=True, help="Jobs processed at once.")  # fmt: skip
@click.option("--inference", "inference", default=None, metavar="ADDRESS",
              help="Embed through the models' Ray Serve deployment on this Ray cluster, as "
              "`serve --inference` does (default: "
              f"{ENV_PREFIX}INFERENCE, else in process).")  # fmt: skip
@config_option
def worker(
    data_dir: Path | None,
    queue: str | None,
    concurrency: int,
    inference: str | None,
    config: Path | None,
) -> None:
    """Run ingest workers as a separate process on a data dir a server also uses.

    Jobs are leased from the durable queue; a killed worker's jobs become visible again after
    the visibility timeout and are finished by another worker, exactly once in the index.
    """
    from embedstack.serving.services import Services

    settings = load_settings(config, data_dir=data_dir, queue=queue, inference=inference)
    ignore_file_size_signal()
    services = Services.build(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        workers = [services.make_worker(f"proc{os.getpid()}-{i}") for i in range(concurrency)]
        click.echo(
            f"embedstack worker: {concurrency} worker(s) on {settings.data_dir}, queue "
            f"{settings.queue}", err=True,
        )  # fmt: skip
        tasks = [asyncio.create_task(w.run(stop)) for w in workers]
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        stop.set()
        # in-flight jobs finish for up to shutdown_timeout_s, then are cancelled: their leases
        # are released at once instead of waiting out the visibility timeout
        _, pending = await asyncio.wait(tasks, timeout=settings.shutdown_timeout_s)
        for task in pending:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await services.close()

    asyncio.run(run())
