"""Request bodies in memory: one budget for the bodies being received at once, and reading a body
under its size limit and its timeout.

A request with a body reserves its size before a byte of it is read: its `Content-Length`, or
the whole size limit when the length is not known in advance (chunked, or compressed: a gzip
body's length says nothing of what it unpacks to). Past the budget it gets 503 with Retry-After
at once. The reservation lasts until the handler has turned the body into what it keeps (parsed,
images decoded and fitted: `body_done`), or else until the request ends.

A client that sends `Expect: 100-continue` waits for the go-ahead before it sends its body; that
goes out only once the API key and the budget have let the request in, so a refused upload is
never sent at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler, Middleware

from ..errors import BodyBudgetFull, BodyTimeout
from .config import MIB
from .keys import BODY_BUDGET, CONFIG

log = logging.getLogger(__name__)

# A refused body is worth retrying as soon as another one is through: bodies arrive in seconds.
BUDGET_RETRY_AFTER = 1

# The rest of a body after an early answer (503, 401, 413, 400): read and dropped, so that a client
# still sending gets to read its answer (most read only once their body is sent). Its first
# UNPACED_BYTES go at once, so that a small one's client has its answer at once; past them all
# such bodies together are read at DRAIN_RATE bytes a second, and each for at most the body
# timeout. Unpaced, 36 refused 32 MiB uploads took most of the event loop's turns during a flood.
UNPACED_BYTES = 1 * MIB
DRAIN_RATE = 64 * MIB


class BodyBudget:
    """Bytes reserved by the bodies being received now, under one limit; on the event loop only."""

    def __init__(
        self,
        limit: int,
        *,
        on_held: Callable[[int], None] = lambda held: None,
        on_released: Callable[[int], None] = lambda size: None,
    ) -> None:
        """`on_held(bytes held now)` after each change, `on_released(bytes)` after each release."""
        self.limit = limit
        self.held = 0
        self._on_held = on_held
        self._on_released = on_released

    def reserve(self, size: int) -> Reservation:
        if self.held + size > self.limit:
            raise BodyBudgetFull(
                f"the service is receiving {self.held / MIB:.1f} MiB of request bodies, its limit "
                f"for bodies held at once is {self.limit / MIB:g} MiB; retry shortly",
                retry_after=BUDGET_RETRY_AFTER,
            )
        self.held += size
        self._on_held(self.held)
        return Reservation(self, size)

    def _release(self, size: int) -> None:
        self.held -= size
        self._on_held(self.held)
        self._on_released(size)


class Reservation:
    """One request's share of the budget; released once (later calls do nothing)."""

    def __init__(self, budget: BodyBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def release(self) -> None:
        if self.size:
            self._budget._release(self.size)
            self.size = 0


_RESERVATION: web.RequestKey[Reservation] = web.RequestKey("body_reservation", Reservation)


def reservation_size(request: web.Request, max_bytes: int) -> int:
    """What a body may hold once read: its announced length, else the size limit."""
    length = request.content_length
    if length is None or request.headers.get(hdrs.CONTENT_ENCODING, "identity").lower() != "identity":
        return max_bytes
    return min(length, max_bytes)  # a longer one gets 413 before it is read


async def defer_continue(request: web.Request) -> None:
    """The routes' Expect handler: aiohttp's default answers 100 Continue before any middleware has
    run; this one leaves it to body_budget_middleware (an unknown expectation still gets 417)."""
    expect = request.headers.get(hdrs.EXPECT, "").lower()
    if request.version == HttpVersion11 and expect != "100-continue":
        raise web.HTTPExpectationFailed(text=f"unknown Expect: {expect}")


async def _send_continue(request: web.Request, max_bytes: int) -> None:
    if (request.content_length or 0) > max_bytes:
        return  # the handler answers 413 without reading it
    if request.version == HttpVersion11 and request.headers.get(hdrs.EXPECT, "").lower() == "100-continue":
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the interim answer is not part of the response


@web.middleware
async def body_budget_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Reserve a routed request's body before its handler reads a byte of it; release it at the end."""
    if not request.body_exists or request.match_info.http_exception is not None:  # no body, 404, 405
        return await handler(request)
    max_bytes = request.app[CONFIG].max_body_bytes
    reservation = request.app[BODY_BUDGET].reserve(reservation_size(request, max_bytes))
    request[_RESERVATION] = reservation
    try:
        await _send_continue(request, max_bytes)
        return await handler(request)
    finally:
        reservation.release()


class DrainPacer:
    """Shares DRAIN_RATE among the bodies being dropped: each chunk waits for its turn."""

    def __init__(self) -> None:
        self._rate = DRAIN_RATE
        self._free_at = 0.0  # the loop time at which all that was read so far is paid for

    async def pay(self, size: int) -> None:
        now = asyncio.get_running_loop().time()
        self._free_at = max(self._free_at, now) + size / self._rate
        await asyncio.sleep(self._free_at - now)


def drain_middleware() -> Middleware:
    """The outermost middleware: once a handler answered without reading all of its body, send the
    answer, then read the rest (paced) and drop it. Past the body timeout aiohttp closes the
    connection (serving.py runs it with no lingering read of its own)."""
    pacer = DrainPacer()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)
        if request.content.is_eof() or request.transport is None:  # read, or closed (408)
            return response
        await response.prepare(request)
        await response.write_eof()
        content, read = request.content, 0
        with contextlib.suppress(TimeoutError, OSError, HttpProcessingError):  # late, gone, malformed
            async with asyncio.timeout(request.app[CONFIG].body_timeout):
                while chunk := await content.readany():
                    read += len(chunk)
                    if read > UNPACED_BYTES:
                        await pacer.pay(len(chunk))
        return response

    return middleware


def body_done(request: web.Request) -> None:
    """The handler holds nothing of its body any more (parsed, decoded, the big parts dropped)."""
    reservation = request.get(_RESERVATION)
    if reservation is not None:
        reservation.release()


@asynccontextmanager
async def body_deadline(timeout: float) -> AsyncIterator[None]:
    """What is inside (reading a body) must end within `timeout` seconds, else BodyTimeout (408)."""
    try:
        async with asyncio.timeout(timeout):
            yield
    except TimeoutError:
        log.info("request body incomplete after %g s: answering 408, closing the connection", timeout)
        raise BodyTimeout(f"the request body did not arrive within the {timeout:g} s body timeout") from None


async def read_body(request: web.Request, *, max_bytes: int, timeout: float) -> bytearray:
    """The whole body: 413 past max_bytes (after any Content-Encoding is undone), 408 past `timeout`.

    Read here rather than with request.read(), which keeps its copy for as long as the request
    lives: this one is the caller's, and gone with its last reference.
    """
    if request.content_length is not None and request.content_length > max_bytes:
        # Refused before reading a byte: a client that announces 10 GB need not be waited for.
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    body = bytearray()
    async with body_deadline(timeout):
        async for chunk in request.content.iter_any():
            if len(body) + len(chunk) > max_bytes:
                raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=len(body) + len(chunk))
            body += chunk
    return body
