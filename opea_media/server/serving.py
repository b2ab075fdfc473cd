"""Serving an app on its listening socket: what web.run_app does, plus the one thing it cannot do,
a cap on the connections open at once.

A connection past the cap is accepted and answered at once, before its request is read: 503 with
Retry-After and `Connection: close`, in the route-independent OPEA error body, then closed. A
client sees an HTTP answer it can retry on (not a reset it cannot tell from a crash); a load
balancer counts a 503, and so do this service's metrics; the socket is freed within a second.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from .keys import CONFIG, METRICS
from .shutdown import CLOSE_TIMEOUT

# Seconds a refused connection may go on sending (its request, which is discarded) after its
# answer; closing with unread data would reset the connection and lose the answer.
REFUSED_LINGER = 1.0
REFUSED_RETRY_AFTER = 1


def _refusal(max_connections: int) -> bytes:
    detail = f"the service has {max_connections} connections open, its limit; retry shortly"
    body = json.dumps({"detail": detail, "status_code": 503}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: {REFUSED_RETRY_AFTER}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body


class RefusedConnection(asyncio.Protocol):
    """A connection past the cap: the canned 503, then closed once the client closes or lingers."""

    def __init__(self, answer: bytes) -> None:
        self._answer = answer
        self._closer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        transport.write(self._answer)
        if transport.can_write_eof():
            transport.write_eof()
        self._closer = asyncio.get_running_loop().call_later(REFUSED_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass  # the request we will not serve

    def connection_lost(self, exc: Exception | None) -> None:
        if self._closer is not None:
            self._closer.cancel()


class CappedSockSite(web.SockSite):
    """web.SockSite whose connections past `max_connections` get RefusedConnection instead."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        *,
        max_connections: int,
        on_refused: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__(runner, sock)
        self._max_connections = max_connections
        self._on_refused = on_refused
        self._refusal = _refusal(max_connections)

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site; SockSite.start would serve uncapped
        server = self._runner.server
        assert server is not None

        def protocol() -> asyncio.BaseProtocol:
            if len(server.connections) >= self._max_connections:
                self._on_refused()
                return RefusedConnection(self._refusal)
            return server()

        self._server = await asyncio.get_running_loop().create_server(protocol, sock=self._sock)


def runner_options(app: web.Application) -> dict[str, Any]:
    """How aiohttp serves the app, here and in the tests' server."""
    return {
        "access_log": None,  # the access middleware writes JSON access lines with request ids
        "keepalive_timeout": app[CONFIG].keepalive_timeout,
        "handler_cancellation": False,  # aiohttp's default; the service notices disconnects itself
        # The rest of a body after an early answer is bodies.drain_middleware's (paced): aiohttp's
        # own lingering read would go as fast as the client sends.
        "lingering_time": 0,
        "shutdown_timeout": CLOSE_TIMEOUT,
    }


@contextlib.asynccontextmanager
async def serving(
    app: web.Application, sock: socket.socket, *, handle_signals: bool = False
) -> AsyncIterator[web.AppRunner]:
    """The app started and served on `sock` as `serve` runs it; stopped and cleaned up on exit."""
    config = app[CONFIG]
    runner = web.AppRunner(app, handle_signals=handle_signals, **runner_options(app))
    await runner.setup()
    try:
        refused = app[METRICS].connections_refused
        await CappedSockSite(
            runner, sock, max_connections=config.max_connections, on_refused=refused.inc
        ).start()
        yield runner
    finally:
        await runner.cleanup()


def serve_forever(app: web.Application, sock: socket.socket, *, on_listening: Callable[[], None]) -> None:
    """Serve until SIGTERM/SIGINT ends it (shutdown.py drains first): web.run_app's loop, on `serving`."""

    async def main() -> None:
        async with serving(app, sock, handle_signals=True):
            on_listening()
            await asyncio.Event().wait()  # until a signal handler raises GracefulExit

    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(main())
    try:
        loop.run_until_complete(task)
    except (GracefulExit, KeyboardInterrupt):
        pass
    finally:
        if not task.done():
            task.cancel()  # leaves `serving`: the runner's cleanup (the app's cleanup_ctx) runs
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(task)
        _cancel_the_rest(loop)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _cancel_the_rest(loop: asyncio.AbstractEventLoop) -> None:
    tasks = asyncio.all_tasks(loop)
    for task in tasks:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
