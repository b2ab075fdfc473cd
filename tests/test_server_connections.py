"""Connections as `serve` holds them (server/serving.py, on a real listening socket): the cap on
open connections refuses the excess with a 503 and closes it; idle keep-alive connections close."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from opea_media.server.app import create_app, listening_socket
from opea_media.server.config import ServerConfig
from opea_media.server.serving import serving

HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


@asynccontextmanager
async def served(handle: Any, **options: Any) -> AsyncIterator[str]:
    """The text2image app on a free loopback port; yields its base URL once the model serves."""
    sock = listening_socket("127.0.0.1", 0)
    port = sock.getsockname()[1]
    app = create_app(ServerConfig(host="127.0.0.1", **options), model_handle=handle)
    async with serving(app, sock) as runner:
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)
        assert runner.server is not None
        while runner.server.connections:  # the probe's connection is gone before the test starts
            await asyncio.sleep(0.01)
        yield url


async def connect(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def status_line(reader: asyncio.StreamReader) -> bytes:
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    return head.split(b"\r\n", 1)[0]


async def test_connections_past_the_cap_get_503_and_are_closed(server_tiny_t2i: Any) -> None:
    async with served(server_tiny_t2i, max_connections=3) as url:
        held = [await connect(url) for _ in range(3)]  # idle: they have sent nothing yet
        await asyncio.sleep(0.1)

        reader, writer = await connect(url)
        writer.write(HEALTH)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 503")
        assert b"Retry-After: 1" in head and b"Connection: close" in head
        body = await asyncio.wait_for(reader.read(), 5)  # then the service closes it
        assert b'"status_code": 503' in body and b"connections open" in body
        writer.close()

        # Those within the cap are served as usual; once one closes, a newcomer is too.
        first_reader, first_writer = held[0]
        first_writer.write(HEALTH)
        assert await status_line(first_reader) == b"HTTP/1.1 200 OK"
        held[1][1].close()
        await asyncio.sleep(0.2)
        async with aiohttp.ClientSession() as session, session.get(url + "/metrics") as response:
            assert response.status == 200
            assert "opea_media_connections_refused_total 1.0" in await response.text()
        for _, w in held:
            w.close()


async def test_an_idle_keep_alive_connection_is_closed_after_the_timeout(server_tiny_t2i: Any) -> None:
    async with served(server_tiny_t2i, keepalive_timeout=0.5) as url:
        reader, writer = await connect(url)
        writer.write(HEALTH)
        assert await status_line(reader) == b"HTTP/1.1 200 OK"
        await asyncio.wait_for(reader.readuntil(b"}"), 5)  # the body: now the connection idles
        started = asyncio.get_running_loop().time()
        assert await asyncio.wait_for(reader.read(), 10) == b""  # closed by the service
        assert asyncio.get_running_loop().time() - started < 5
        writer.close()
