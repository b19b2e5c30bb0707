"""uvicorn with a graceful drain: the first SIGTERM/SIGINT stops admitting work (503) and lets
in-flight jobs finish (Services.drain, bounded by shutdown_timeout_s) before uvicorn closes its
listener and waits for in-flight requests (bounded by the same setting); a second signal exits
at once."""

from __future__ import annotations

import asyncio
import logging
import socket
from types import FrameType
from typing import Any

import uvicorn

from embedstack.serving.services import Services

log = logging.getLogger(__name__)


class DrainingServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, services: Services) -> None:
        super().__init__(config)
        self._services = services
        self._loop: asyncio.AbstractEventLoop | None = None
        self._draining = False
        self._tasks: set[asyncio.Future[None]] = set()

    async def serve(self, sockets: list[socket.socket] | None = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain = self._services.drain
        if self._draining or drain is None or self._loop is None:
            super().handle_exit(sig, frame)  # a second signal, or not started: exit now
            self.force_exit = self._draining
            return
        self._draining = True
        log.info("signal %d: draining (new writes and queries get 503)", sig)

        async def run() -> None:
            try:
                await drain()
            finally:
                self.should_exit = True

        def start() -> None:
            self._tasks.add(asyncio.ensure_future(run()))

        self._loop.call_soon_threadsafe(start)


def run_server(
    services: Services, app: Any, host: str, port: int, log_level: str,
    tls: tuple[str, str] | None = None,
) -> None:  # fmt: skip
    """Serve `app` under DrainingServer until a signal stops it; `tls` is (cert, key) files."""
    timeout = max(1, round(services.settings.shutdown_timeout_s))
    certs = {"ssl_certfile": tls[0], "ssl_keyfile": tls[1]} if tls else {}
    config = uvicorn.Config(
        app, host=host, port=port, log_level=log_level, access_log=False,
        timeout_graceful_shutdown=timeout, **certs,  # type: ignore[arg-type]
    )  # fmt: skip
    DrainingServer(config, services).run()
