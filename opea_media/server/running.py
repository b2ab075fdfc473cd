"""What every generation endpoint shares: the deadline, a job run through the one worker queue,
work in the I/O threads, a JSON answer serialised off the event loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from ..errors import ClientGone, DeadlineExceeded
from ..params import Image2VideoParams, Text2ImageParams
from .jobs import CLIENT_DISCONNECTED, DEADLINE, HANDLER_CANCELLED, Job, Payload, Previews
from .keys import ADMISSION, CONFIG, WORKER
from .logs import request_id_var

# How often a waiting handler looks whether its client is still connected.
DISCONNECT_POLL_SECONDS = 0.1


@asynccontextmanager
async def admitted(request: web.Request) -> AsyncIterator[float]:
    """A generation request's admission, before a byte of its body is read: counted for the drain,
    refused (503) at once when the model cannot take it now. Yields the request's deadline."""
    app = request.app
    with app[ADMISSION].admit():
        deadline = time.monotonic() + app[CONFIG].request_timeout
        app[WORKER].check_admission()
        yield deadline


@asynccontextmanager
async def before_deadline(deadline: float, timeout: float) -> AsyncIterator[None]:
    """Reading the body and fetching images count against the request timeout too."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            yield
    except TimeoutError:
        raise DeadlineExceeded(f"the request took longer than the {timeout:g} s request timeout") from None


def client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def run_job(
    request: web.Request, payload: Payload, deadline: float, *, previews: Previews | None = None
) -> tuple[Job, Any]:
    """Queue the payload as a job and wait for its result; 504 at its deadline; a vanished client
    cancels it (queued or running)."""
    worker, timeout = request.app[WORKER], request.app[CONFIG].request_timeout
    job = Job(
        request_id=request_id_var.get() or "",
        payload=payload,
        deadline=deadline,
        loop=asyncio.get_running_loop(),
        previews=previews,
    )
    worker.submit(job)
    try:
        while not job.future.done():
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                worker.cancel(job, DEADLINE)
                raise DeadlineExceeded(f"no result within the {timeout:g} s request timeout")
            await asyncio.wait({job.future}, timeout=min(remaining, DISCONNECT_POLL_SECONDS))
            if not job.future.done() and client_gone(request):
                worker.cancel(job, CLIENT_DISCONNECTED)
                raise ClientGone("the client disconnected before its result was ready")
    except asyncio.CancelledError:
        # aiohttp cancels handlers when shutting down past its timeout, and on a disconnect when
        # run with handler_cancellation=True (its test server is).
        worker.cancel(job, CLIENT_DISCONNECTED if client_gone(request) else HANDLER_CANCELLED)
        raise
    return job, job.future.result()


R = TypeVar("R")


async def each(pool: Executor, function: Callable[..., R], *calls: tuple[Any, ...]) -> list[R]:
    """function(*args) for each args tuple in the thread pool, in parallel (zlib and PIL release the GIL)."""
    loop = asyncio.get_running_loop()
    return list(await asyncio.gather(*(loop.run_in_executor(pool, function, *args) for args in calls)))


async def encoded_response(pool: Executor, body: BaseModel, *, status: int = 200) -> web.Response:
    """A JSON response serialised off the event loop (a clip's frames are tens of megabytes)."""
    text = await asyncio.get_running_loop().run_in_executor(pool, body.model_dump_json)
    return web.Response(text=text, status=status, content_type="application/json")


def outputs_made(job: Job, outputs: Sequence[Text2ImageParams | Image2VideoParams], model: str) -> dict[str, Any]:
    """The fields of wire.Outputs: each output's seed, the size and steps, the model, the timings."""
    first = outputs[0]
    return {
        "seeds": [p.seed for p in outputs],
        "model": model,
        "width": first.width,
        "height": first.height,
        "num_inference_steps": first.num_inference_steps,
        "queue_seconds": rounded(job.queue_seconds),
        "inference_seconds": rounded(job.inference_seconds),
    }


def rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"
