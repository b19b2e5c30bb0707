"""A lean HTTP/1.1 client for the load generator: keep-alive connections on asyncio streams.

The generator shares the machine with the server it measures, so its cost per request matters
more than features: a request is one write and two reads on a reused connection (several times
cheaper in CPU than a general-purpose client). Answers must carry Content-Length (the server's
JSON answers do); anything else is an error of the exchange.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from urllib.parse import urlsplit


class ExchangeError(Exception):
    """The connection broke or the answer could not be read; `unanswered`: it closed before
    any byte of an answer came back."""

    def __init__(self, message: str, unanswered: bool = False) -> None:
        super().__init__(message)
        self.unanswered = unanswered


class Endpoint:
    """Where requests go: scheme, host, port and the headers every request carries."""

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r}: write http://HOST:PORT")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        host = f"[{self.host}]" if ":" in self.host else self.host
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = f"Host: {host}:{self.port}\r\n{extra}"


class Connection:
    """One keep-alive connection, used by one request at a time. `retry_after`: the last
    answer's Retry-After header in seconds (0.0 when it had none)."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.endpoint = endpoint
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.retry_after = 0.0

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        e = self.endpoint
        head: bytes | None = None
        try:
            if self.writer is None:
                self.reader, self.writer = await asyncio.open_connection(e.host, e.port, ssl=e.ssl)
            assert self.reader is not None
            typ = "Content-Type: application/json\r\n" if body else ""
            self.writer.write(
                f"{method} {path} HTTP/1.1\r\n{e.head}{typ}Content-Length: {len(body)}\r\n\r\n"
                .encode() + body
            )  # fmt: skip
            head = await self.reader.readuntil(b"\r\n\r\n")
            status, length, close, self.retry_after = _parse_head(head)
            data = await self.reader.readexactly(length)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            self.close()
            unanswered = head is None and (
                isinstance(exc, ConnectionError)
                or (isinstance(exc, asyncio.IncompleteReadError) and not exc.partial)
            )
            raise ExchangeError(f"{type(exc).__name__}: {exc}", unanswered) from exc
        if close:
            self.close()
        return status, data

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


def _parse_head(head: bytes) -> tuple[int, int, bool, float]:
    """Status, Content-Length, whether the server closes the connection, and Retry-After."""
    lines = head.split(b"\r\n")
    status = int(lines[0].split()[1])
    length: int | None = None
    retry = 0.0
    close = lines[0].startswith(b"HTTP/1.0")  # 1.0 closes unless it says keep-alive
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"connection":
            close = value.strip().lower() != b"keep-alive"
        elif key == b"retry-after":
            retry = float(value)
        elif key == b"transfer-encoding":
            raise ValueError("chunked answers are not supported by the load generator")
    if length is None:
        raise ValueError(f"answer {status} without Content-Length")
    return status, length, close, retry


class Pool:
    """Idle connections to reuse; a request takes one (or opens one) and gives it back.

    A server closes keep-alive connections that sat idle (uvicorn after 5 s), so connections
    idle longer than `max_idle_s` are dropped rather than reused, and a request whose reused
    connection turns out closed before any byte of an answer is sent once more on a new one
    (the server never read it)."""

    def __init__(self, endpoint: Endpoint, max_idle_s: float = 2.0) -> None:
        self.endpoint = endpoint
        self.max_idle_s = max_idle_s
        self.idle: list[tuple[float, Connection]] = []

    def _take(self) -> tuple[Connection, bool]:
        now = time.monotonic()
        while self.idle:
            since, conn = self.idle.pop()
            if now - since <= self.max_idle_s:
                return conn, True
            conn.close()
        return Connection(self.endpoint), False

    async def request(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        conn, reused = self._take()
        try:
            try:
                status, data = await conn.request(method, path, body)
            except ExchangeError as exc:
                if not (reused and exc.unanswered):
                    raise
                conn = Connection(self.endpoint)
                status, data = await conn.request(method, path, body)
        except BaseException:  # a cancelled (timed out) exchange leaves the stream mid-answer
            conn.close()
            raise
        if conn.writer is not None:
            self.idle.append((time.monotonic(), conn))
        return status, data

    def close(self) -> None:
        for _, conn in self.idle:
            conn.close()
        self.idle.clear()
