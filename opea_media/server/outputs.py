"""GET /v1/outputs/{name}: the output folder's files (OPEA's video_path, OpenAI's url), and the
folder's upkeep: ready at start-up, pruned on every write and once a minute."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from ..errors import InvalidInput, OpeaMediaError
from ..media.store import OutputStore
from .keys import CONFIG, IO_POOL, OUTPUTS

log = logging.getLogger(__name__)

OUTPUTS_PREFIX = "/v1/outputs/"
PRUNE_INTERVAL = 60.0  # seconds; files also go whenever a new one is written


def output_path(name: str) -> str:
    return OUTPUTS_PREFIX + name


def output_url(request: web.Request, name: str) -> str:
    """The absolute URL of a stored file: under --public-url, else the address the request came to."""
    public = request.app[CONFIG].public_url
    base = public.rstrip("/") if public else f"{request.scheme}://{request.host}"
    return base + output_path(name)


async def store_file(
    request: web.Request, writer: Callable[[Path], object], *, prefix: str, suffix: str
) -> str:
    """Write one output file in the I/O threads; its name, or a 500 saying why it could not be kept."""
    store = request.app[OUTPUTS]
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(
            request.app[IO_POOL], lambda: store.write_with(writer, prefix=prefix, suffix=suffix)
        )
    except InvalidInput as exc:  # a full disk or a read-only folder is ours, not the client's
        raise OpeaMediaError(f"could not store the output file: {exc.detail}") from None


async def output_file(request: web.Request) -> web.StreamResponse:
    """A stored file, with its content type; 404 once it expired or was pruned."""
    stored = request.app[OUTPUTS].find(request.match_info["name"])
    return web.FileResponse(stored.path, headers={"Content-Type": stored.content_type})


async def keep_outputs_bounded(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: create the folder, then prune it periodically (`serve` checked it is writable)."""
    store: OutputStore = app[OUTPUTS]
    loop = asyncio.get_running_loop()
    try:
        await loop.run_in_executor(None, store.prepare)
    except OpeaMediaError as exc:  # the requests that need it will say so, one by one
        log.warning("the output folder is unusable: %s", exc.detail)

    async def prune_forever() -> None:
        while True:
            await asyncio.sleep(PRUNE_INTERVAL)
            try:
                await loop.run_in_executor(None, store.prune)
            except OpeaMediaError as exc:
                log.warning("could not prune the output folder: %s", exc.detail)

    task = asyncio.create_task(prune_forever())
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
