"""The endpoints: health, metrics, the OpenAPI document, /v1/text2image and /v1/image2video.

The OpenAI and AUTOMATIC1111 APIs have modules of their own (openai_api.py, a1111.py).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from PIL import Image
from pydantic import BaseModel

from ..media.fetch import UrlPolicy
from ..media.images import fit_image, png_base64
from ..media.sources import load_images
from ..media.video import write_video
from ..metadata import text2image_metadata
from ..params import Image2VideoParams, Text2ImageParams, per_output, resolve_seed
from .bodies import body_done
from .jobs import Job, VideoRequest
from .keys import ADMISSION, CONFIG, IO_POOL, METRICS, OPENAPI, WORKER
from .outputs import output_path, store_file
from .running import admitted, before_deadline, count, each, encoded_response, outputs_made, run_job
from .validation import read_json_body
from .wire import (
    Alive,
    Dead,
    Healthy,
    Image2VideoRequest,
    Image2VideoResponse,
    OpeaHealthCheck,
    Text2ImageRequest,
    Text2ImageResponse,
    Unhealthy,
)
from .worker import LOADING_RETRY_AFTER

# What OPEA's microservices say on /v1/health_check (GenAIComps comps/version.py, http_service.py).
OPEA_VERSION = "1.5"
OPEA_DESCRIPTION = "OPEA Microservice Infrastructure"

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


async def opea_health_check(request: web.Request) -> web.Response:
    """GET /v1/health_check as every OPEA microservice answers it (liveness, not readiness)."""
    body = OpeaHealthCheck.model_validate(
        {
            "Service Title": f"opea_service@{request.app[WORKER].task}",
            "Version": OPEA_VERSION,
            "Service Description": OPEA_DESCRIPTION,
        }
    )
    return web.Response(text=body.model_dump_json(by_alias=True), content_type="application/json")


# --- generation ---------------------------------------------------------------------------------


async def text2image(request: web.Request) -> web.Response:
    app = request.app
    config, worker, pool = app[CONFIG], app[WORKER], app[IO_POOL]
    async with admitted(request) as deadline:
        async with before_deadline(deadline, config.request_timeout):
            body = await read_json_body(request, Text2ImageRequest)
        requested = body.params()
        params = worker.model.complete(dataclasses.replace(requested, seed=resolve_seed(requested.seed)))
        job, images = await run_job(request, params, deadline)
        model = worker.handle.ref
        # The same PNG text chunks the CLI writes: each image can be made again on its own.
        own = per_output(params, len(images))
        encoded = await each(
            pool,
            png_base64,
            *((image, text2image_metadata(p, model=model)) for image, p in zip(images, own, strict=True)),
        )
        what = count(len(encoded), "image")
        response = Text2ImageResponse(
            images=encoded, guidance_scale=params.guidance_scale, **_result(job, what, own, model)
        )
        return await encoded_response(pool, response)


async def image2video(request: web.Request) -> web.Response:
    app = request.app
    config, worker, pool = app[CONFIG], app[WORKER], app[IO_POOL]
    async with admitted(request) as deadline:
        async with before_deadline(deadline, config.request_timeout):
            clip_params, fitted = await _clips_asked(request)
        body_done(request)
        job, clips = await run_job(request, VideoRequest(tuple(fitted), tuple(clip_params)), deadline)
        frames = await each(pool, png_base64, *((frame,) for clip in clips for frame in clip))
        first = clip_params[0]
        # OPEA's clients read video_path, a file whose name ends in generated.mp4.
        videos = [
            output_path(
                await store_file(
                    request,
                    functools.partial(write_video, clip, fps=first.fps),
                    prefix=f"{job.request_id}-{k}",
                    suffix="-generated.mp4",
                )
            )
            for k, clip in enumerate(clips)
        ]
        what = f"{count(len(clips), 'clip')} ({len(frames)} frames)"
        response = Image2VideoResponse(
            frames=frames,
            frames_per_clip=[len(clip) for clip in clips],
            fps=first.fps,
            video_path=videos[0],
            videos=videos,
            **_result(job, what, clip_params, worker.handle.ref),
        )
        return await encoded_response(pool, response)


async def _clips_asked(request: web.Request) -> tuple[list[Image2VideoParams], list[Image.Image]]:
    """Each clip's complete parameters and its image, fitted to the clip: all a job needs. The body,
    its base64 and the full-size images die with this call, before its body budget is released."""
    app = request.app
    config, worker, pool = app[CONFIG], app[WORKER], app[IO_POOL]
    policy = UrlPolicy(allow_private=config.allow_private_urls, allowed_hosts=config.allowed_url_hosts)
    body = await read_json_body(request, Image2VideoRequest, holds_body=True)
    sources = body.sources()
    fields = [f"images_path[{i}].image_path" for i in range(len(sources))]
    images = await load_images(
        sources, fields=fields, policy=policy, fetch_timeout=config.fetch_timeout, pool=pool
    )
    requested = body.params()
    seed = resolve_seed(requested.seed)
    clip_params = per_output(worker.model.complete(dataclasses.replace(requested, seed=seed)), len(images))
    # Fit each upload to its clip now (the model then has nothing left to fit): a queued job
    # holds a clip-sized image, not 16 megapixels.
    fitted = await each(
        pool, fit_image, *((im, p.width, p.height) for im, p in zip(images, clip_params, strict=True))
    )
    return clip_params, fitted


def _result(
    job: Job, what: str, outputs: Sequence[Text2ImageParams | Image2VideoParams], model: str
) -> dict[str, Any]:
    """What every OPEA success answer says: the outputs' seeds and size, the model, the timings."""
    return {
        "id": job.request_id,
        "message": f"Generated {what} in {job.inference_seconds or 0.0:.2f} s",
        "seed": outputs[0].seed,
        **outputs_made(job, outputs, model),
    }
