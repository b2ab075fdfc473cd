"""The endpoints: health, metrics, the OpenAPI document, /v1/text2image and /v1/image2video."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any, TypeVar

from aiohttp import web
from pydantic import BaseModel

from ..errors import ClientGone, DeadlineExceeded
from ..media.fetch import UrlPolicy
from ..media.images import fit_image, png_base64
from ..media.sources import load_images
from ..metadata import text2image_metadata
from ..params import Image2VideoParams, Text2ImageParams, per_output, resolve_seed
from .jobs import CLIENT_DISCONNECTED, DEADLINE, HANDLER_CANCELLED, Job, Payload, VideoRequest
from .keys import ADMISSION, CONFIG, IO_POOL, METRICS, OPENAPI, WORKER
from .logs import request_id_var
from .validation import read_json_body
from .wire import (
    Alive,
    Dead,
    Healthy,
    Image2VideoRequest,
    Image2VideoResponse,
    Text2ImageRequest,
    Text2ImageResponse,
    Unhealthy,
)
from .worker import LOADING_RETRY_AFTER

# How often a waiting handler looks whether its client is still connected.
DISCONNECT_POLL_SECONDS = 0.1

# --- health and metrics: answered on the event loop, never waiting for the model ----------------------


def _json(body: BaseModel, *, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=body.model_dump_json(), status=status, content_type="application/json", headers=headers
    )


async def health(request: web.Request) -> web.Response:
    """200 once the model serves; 503 while loading, after a failed load, or while shutting down."""
    app = request.app
    worker = app[WORKER]
    service, model = worker.task, worker.handle.ref
    if app[ADMISSION].draining:
        draining = Unhealthy(
            status="draining", detail="the service is shutting down", service=service, model=model
        )
        return _json(draining, status=503)
    status = worker.status
    if status.state == "ready":
        return _json(
            Healthy(service=service, model=model, queue_depth=worker.queue_depth, running=worker.running)
        )
    headers = {"Retry-After": str(LOADING_RETRY_AFTER)} if status.state == "loading" else None
    unhealthy = Unhealthy(status=status.state, detail=status.detail, service=service, model=model)  # type: ignore[arg-type]
    return _json(unhealthy, status=503, headers=headers)


async def live(request: web.Request) -> web.Response:
    """200 while the process can serve; a failed model load is for readiness, not a reason to restart.

    A dead worker thread is: nothing in this process will run a model again, a new process will.
    """
    worker = request.app[WORKER]
    if not worker.alive:
        return _json(Dead(detail=worker.status.detail), status=503)
    return _json(Alive())


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return web.Response(body=request.app[OPENAPI], content_type="application/json", charset="utf-8")


# --- generation ---------------------------------------------------------------------------------


@asynccontextmanager
async def _before_deadline(deadline: float, timeout: float) -> AsyncIterator[None]:
    """Reading the body and fetching images count against the request timeout too."""
    try:
        async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
            yield
    except TimeoutError:
        raise DeadlineExceeded(f"the request took longer than the {timeout:g} s request timeout") from None


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _run(request: web.Request, payload: Payload, deadline: float) -> tuple[Job, Any]:
    """Queue the payload as a job and wait for its result; 504 at its deadline; a vanished client
    cancels it (queued or running)."""
    worker, timeout = request.app[WORKER], request.app[CONFIG].request_timeout
    job = Job(
        request_id=request_id_var.get() or "",
        payload=payload,
        deadline=deadline,
        loop=asyncio.get_running_loop(),
    )
    worker.submit(job)
    try:
        while not job.future.done():
            remaining = job.deadline - time.monotonic()
            if remaining <= 0:
                worker.cancel(job, DEADLINE)
                raise DeadlineExceeded(f"no result within the {timeout:g} s request timeout")
            await asyncio.wait({job.future}, timeout=min(remaining, DISCONNECT_POLL_SECONDS))
            if not job.future.done() and _client_gone(request):
                worker.cancel(job, CLIENT_DISCONNECTED)
                raise ClientGone("the client disconnected before its result was ready")
    except asyncio.CancelledError:
        # aiohttp cancels handlers when shutting down past its timeout, and on a disconnect when
        # run with handler_cancellation=True (its test server is).
        worker.cancel(job, CLIENT_DISCONNECTED if _client_gone(request) else HANDLER_CANCELLED)
        raise
    return job, job.future.result()


R = TypeVar("R")


async def _each(pool: Executor, function: Callable[..., R], *calls: tuple[Any, ...]) -> list[R]:
    """function(*args) for each args tuple in the thread pool, in parallel (zlib and PIL release the GIL)."""
    loop = asyncio.get_running_loop()
    return list(await asyncio.gather(*(loop.run_in_executor(pool, function, *args) for args in calls)))


async def _encoded_response(pool: Executor, body: BaseModel) -> web.Response:
    """A 200 JSON response serialised off the event loop (a clip's frames are tens of megabytes)."""
    text = await asyncio.get_running_loop().run_in_executor(pool, body.model_dump_json)
    return web.Response(text=text, content_type="application/json")


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def _result(
    job: Job, what: str, outputs: Sequence[Text2ImageParams | Image2VideoParams], model: str
) -> dict[str, Any]:
    """What every success answer says: the outputs' seeds and size, the model, the timings."""
    first = outputs[0]
    return {
        "message": f"Generated {what} in {job.inference_seconds or 0.0:.2f} s",
        "seed": first.seed,
        "seeds": [p.seed for p in outputs],
        "model": model,
        "width": first.width,
        "height": first.height,
        "num_inference_steps": first.num_inference_steps,
        "queue_seconds": _rounded(job.queue_seconds),
        "inference_seconds": _rounded(job.inference_seconds),
    }


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


async def text2image(request: web.Request) -> web.Response:
    app = request.app
    config, worker, pool = app[CONFIG], app[WORKER], app[IO_POOL]
    with app[ADMISSION].admit():
        deadline = time.monotonic() + config.request_timeout
        worker.check_admission()  # before reading a byte of the body
        async with _before_deadline(deadline, config.request_timeout):
            body = await read_json_body(request, Text2ImageRequest, pool, max_bytes=config.max_body_bytes)
        requested = body.params()
        params = worker.model.complete(dataclasses.replace(requested, seed=resolve_seed(requested.seed)))
        job, images = await _run(request, params, deadline)
        model = worker.handle.ref
        # The same PNG text chunks the CLI writes: each image can be made again on its own.
        own = per_output(params, len(images))
        encoded = await _each(
            pool,
            png_base64,
            *((image, text2image_metadata(p, model=model)) for image, p in zip(images, own, strict=True)),
        )
        what = _count(len(encoded), "image")
        response = Text2ImageResponse(
            images=encoded, guidance_scale=params.guidance_scale, **_result(job, what, own, model)
        )
        return await _encoded_response(pool, response)


async def image2video(request: web.Request) -> web.Response:
    app = request.app
    config, worker, pool = app[CONFIG], app[WORKER], app[IO_POOL]
    with app[ADMISSION].admit():
        deadline = time.monotonic() + config.request_timeout
        worker.check_admission()
        policy = UrlPolicy(allow_private=config.allow_private_urls, allowed_hosts=config.allowed_url_hosts)
        async with _before_deadline(deadline, config.request_timeout):
            body = await read_json_body(request, Image2VideoRequest, pool, max_bytes=config.max_body_bytes)
            sources = body.sources()
            fields = [f"images_path[{i}].image_path" for i in range(len(sources))]
            images = await load_images(
                sources, fields=fields, policy=policy, fetch_timeout=config.fetch_timeout, pool=pool
            )
        requested = body.params()
        seed = resolve_seed(requested.seed)
        clip_params = per_output(
            worker.model.complete(dataclasses.replace(requested, seed=seed)), len(images)
        )
        # Fit each upload to its clip now (the model then has nothing left to fit): a queued job
        # holds a clip-sized image, not 16 megapixels.
        fitted = await _each(
            pool, fit_image, *((im, p.width, p.height) for im, p in zip(images, clip_params, strict=True))
        )
        job, clips = await _run(request, VideoRequest(tuple(fitted), tuple(clip_params)), deadline)
        frames = await _each(pool, png_base64, *((frame,) for clip in clips for frame in clip))
        what = f"{_count(len(clips), 'clip')} ({len(frames)} frames)"
        response = Image2VideoResponse(
            frames=frames,
            frames_per_clip=[len(clip) for clip in clips],
            fps=clip_params[0].fps,
            **_result(job, what, clip_params, worker.handle.ref),
        )
        return await _encoded_response(pool, response)
