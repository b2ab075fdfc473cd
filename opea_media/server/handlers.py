"""The endpoints: health, metrics, /v1/text2image and /v1/image2video."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import functools
import time
from collections.abc import AsyncIterator
from concurrent.futures import Executor
from contextlib import asynccontextmanager
from typing import Any

from aiohttp import web
from PIL import Image

from ..errors import DeadlineExceeded
from ..media.fetch import UrlPolicy
from ..media.images import encode_png, fit_image
from ..metadata import text2image_metadata
from ..params import Image2VideoParams, Text2ImageParams, image_seed, resolve_seed
from .errors import ClientGone
from .inputs import load_images
from .jobs import CLIENT_DISCONNECTED, DEADLINE, HANDLER_CANCELLED, Job, VideoRequest
from .logs import request_id_var
from .schemas import (
    image2video_response,
    json_body_response,
    parse_image2video,
    parse_text2image,
    read_json_object,
    text2image_response,
)
from .state import ADMISSION, CONFIG, IO_POOL, METRICS, OPENAPI, WORKER
from .worker import LOADING_RETRY_AFTER, InferenceWorker

# How often a waiting handler looks whether its client is still connected.
DISCONNECT_POLL_SECONDS = 0.1
# zlib level 3 instead of Pillow's 6: a 1024x576 frame encodes ~3x faster for ~10% more bytes.
PNG_COMPRESS_LEVEL = 3

# --- health and metrics: answered on the event loop, never waiting for the model ----------------------


def _health(app: web.Application) -> web.Response:
    worker = app[WORKER]
    base = {"service": worker.task, "model": worker.slot.model_ref}
    if app[ADMISSION].draining:
        body = {"status": "draining", "detail": "the service is shutting down", "status_code": 503, **base}
        return web.json_response(body, status=503)
    status = worker.status
    if status.state == "ready":
        return web.json_response(
            {"status": "healthy", **base, "queue_depth": worker.queue_depth, "running": worker.running}
        )
    body = {"status": status.state, "detail": status.detail, "status_code": 503, **base}
    headers = {"Retry-After": str(LOADING_RETRY_AFTER)} if status.state == "loading" else None
    return web.json_response(body, status=503, headers=headers)


async def health(request: web.Request) -> web.Response:
    """200 once the model serves; 503 while loading, after a failed load, or while shutting down."""
    return _health(request.app)


async def ready(request: web.Request) -> web.Response:
    return _health(request.app)


async def live(request: web.Request) -> web.Response:
    """200 while the process can serve; a failed model load is for readiness, not a reason to restart.

    A dead worker thread is: nothing in this process will run a model again, a new process will.
    """
    worker = request.app[WORKER]
    if not worker.alive:
        body = {"status": "failed", "detail": worker.status.detail, "status_code": 503}
        return web.json_response(body, status=503)
    return web.json_response({"status": "alive"})


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    """The service's OpenAPI document (openapi.py), generated from the same fields the parser reads."""
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


async def _wait_for(request: web.Request, worker: InferenceWorker, job: Job, timeout: float) -> Any:
    """The job's result; 504 at its deadline; a vanished client cancels it (queued or running)."""
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
    return job.future.result()


def _png_base64(image: Image.Image, metadata: dict[str, str] | None = None) -> str:
    return base64.b64encode(encode_png(image, metadata=metadata, compress_level=PNG_COMPRESS_LEVEL)).decode(
        "ascii"
    )


async def _encode(
    pool: Executor, images: list[Image.Image], metadata: list[dict[str, str]] | None = None
) -> list[str]:
    """PNG + base64 in the app's thread pool, in parallel (zlib releases the GIL)."""
    loop = asyncio.get_running_loop()
    tasks = [
        loop.run_in_executor(pool, functools.partial(_png_base64, image, metadata[i] if metadata else None))
        for i, image in enumerate(images)
    ]
    return list(await asyncio.gather(*tasks))


async def text2image(request: web.Request) -> web.Response:
    app = request.app
    config, worker = app[CONFIG], app[WORKER]
    with app[ADMISSION].admit():
        deadline = time.monotonic() + config.request_timeout
        worker.check_admission()  # before reading a byte of the body
        async with _before_deadline(deadline, config.request_timeout):
            data = await read_json_object(request, app[IO_POOL], max_bytes=config.max_body_bytes)
        parsed = parse_text2image(data)
        params = worker.slot.model.complete(dataclasses.replace(parsed, seed=resolve_seed(parsed.seed)))
        job = Job(
            request_id=request_id_var.get() or "",
            payload=params,
            deadline=deadline,
            loop=asyncio.get_running_loop(),
        )
        worker.submit(job)
        images: list[Image.Image] = await _wait_for(request, worker, job, config.request_timeout)
        metadata = [_image_metadata(params, k, worker.slot.model_ref) for k in range(len(images))]
        encoded = await _encode(app[IO_POOL], images, metadata)
        payload = text2image_response(params, encoded, job=job, model=worker.slot.model_ref)
        return await json_body_response(payload, app[IO_POOL])


def _image_metadata(params: Text2ImageParams, index: int, model: str) -> dict[str, str]:
    """The same PNG text chunks the CLI writes: each image can be made again on its own."""
    assert params.seed is not None
    own = dataclasses.replace(params, num_images_per_prompt=1, seed=image_seed(params.seed, index))
    return text2image_metadata(own, model=model)


async def image2video(request: web.Request) -> web.Response:
    app = request.app
    config, worker = app[CONFIG], app[WORKER]
    with app[ADMISSION].admit():
        deadline = time.monotonic() + config.request_timeout
        worker.check_admission()
        policy = UrlPolicy(allow_private=config.allow_private_urls, allowed_hosts=config.allowed_url_hosts)
        async with _before_deadline(deadline, config.request_timeout):
            data = await read_json_object(request, app[IO_POOL], max_bytes=config.max_body_bytes)
            sources, parsed = parse_image2video(data)
            images = await load_images(
                sources, policy=policy, fetch_timeout=config.fetch_timeout, pool=app[IO_POOL]
            )
        seed = resolve_seed(parsed.seed)
        clip_params = tuple(
            worker.slot.model.complete(dataclasses.replace(parsed, seed=image_seed(seed, k)))
            for k in range(len(images))
        )
        video = VideoRequest(tuple(await _fit(app[IO_POOL], images, clip_params)), clip_params)
        job = Job(
            request_id=request_id_var.get() or "",
            payload=video,
            deadline=deadline,
            loop=asyncio.get_running_loop(),
        )
        worker.submit(job)
        clips: list[list[Image.Image]] = await _wait_for(request, worker, job, config.request_timeout)
        encoded = await _encode(app[IO_POOL], [frame for clip in clips for frame in clip])
        per_clip, start = [], 0
        for clip in clips:
            per_clip.append(encoded[start : start + len(clip)])
            start += len(clip)
        payload = image2video_response(video, per_clip, seed=seed, job=job, model=worker.slot.model_ref)
        return await json_body_response(payload, app[IO_POOL])


async def _fit(
    pool: Executor, images: list[Image.Image], params: tuple[Image2VideoParams, ...]
) -> list[Image.Image]:
    """Fit each upload to its clip size now: a queued job then holds a clip-sized image, not 16 megapixels."""
    loop = asyncio.get_running_loop()
    tasks = []
    for image, p in zip(images, params, strict=True):
        assert p.width and p.height
        tasks.append(loop.run_in_executor(pool, fit_image, image, p.width, p.height))
    return list(await asyncio.gather(*tasks))
