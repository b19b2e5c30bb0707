"""The load generator's HTTP client (also bench/goodput.py's) against a real loopback socket."""

from __future__ import annotations

import asyncio

from embedstack.loadtest.http import Connection, Endpoint

ANSWERS = [
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 4\r\n\r\nslow",
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
]


async def _exchange() -> tuple[list[tuple[int, bytes, float]], list[bytes]]:
    seen: list[bytes] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for answer in ANSWERS:  # two requests on one keep-alive connection
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            seen.append(head + await reader.readexactly(length))
            writer.write(answer)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    conn = Connection(Endpoint(f"http://127.0.0.1:{port}", {"X-Request-Budget-Ms": "50"}))
    got = []
    for _ in ANSWERS:
        status, data = await asyncio.wait_for(conn.request("POST", "/q", b'{"a":1}'), 10)
        got.append((status, data, conn.retry_after))
    conn.close()
    server.close()
    await server.wait_closed()
    return got, seen


def test_one_connection_reads_retry_after_and_sends_the_endpoint_headers() -> None:
    got, seen = asyncio.run(_exchange())
    assert got == [(429, b"slow", 3.0), (200, b"ok", 0.0)]
    assert len(seen) == 2 and all(b"X-Request-Budget-Ms: 50\r\n" in s for s in seen)
    assert seen[0].startswith(b"POST /q HTTP/1.1\r\n") and seen[0].endswith(b'{"a":1}')
