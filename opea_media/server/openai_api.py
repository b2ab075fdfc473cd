"""The OpenAI Images API on the text2image service: POST /v1/images/generations (JSON, or a
stream of server-sent events with partial images), GET /v1/models and /v1/models/{id}.
Edits are in openai_edits.py. Every job goes through the one worker queue.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import re
import time
from typing import Any

from aiohttp import web
from PIL import Image
from pydantic import BaseModel

from ..errors import Cancelled, InvalidInput, NotFound, OpeaMediaError
from ..media.files import write_atomic
from ..media.images import encode_image
from ..metadata import text2image_metadata
from ..params import (
    TEXT2IMAGE_DEFAULT_GUIDANCE,
    TEXT2IMAGE_DEFAULT_STEPS,
    Text2ImageParams,
    per_output,
    resolve_seed,
)
from ..params import preview_steps as spread_previews
from .error_styles import OPENAI, Failure
from .jobs import Payload, Previews
from .keys import CONFIG, IO_POOL, STARTED_AT, WORKER
from .logs import request_id_var
from .openai_wire import (
    CompletedEvent,
    ImageData,
    ImageGenerationRequest,
    ImagesResponse,
    ModelList,
    OpenAIModel,
    PartialImageEvent,
    _ImageOptions,
)
from .outputs import output_url, store_file
from .running import admitted, before_deadline, each, encoded_response, run_job
from .validation import read_json_body

# quality -> denoising steps ("auto": the service's default). num_inference_steps overrides it.
QUALITY_STEPS = {"low": 10, "medium": TEXT2IMAGE_DEFAULT_STEPS, "standard": TEXT2IMAGE_DEFAULT_STEPS}
QUALITY_STEPS |= {"high": 50, "hd": 50}
# Any of OpenAI's image model names means the loaded model: clients send their own default.
OPENAI_MODEL_NAME = re.compile(r"(dall-e-|gpt-image-|chatgpt-image-)[A-Za-z0-9._-]*")


def model_names(ref: str) -> tuple[str, str]:
    """The names of the loaded model: its reference and the last part of it (a Hub id's name)."""
    return ref, ref.rstrip("/").rsplit("/", 1)[-1]


def check_model(name: str | None, ref: str) -> None:
    if name is None or name in model_names(ref) or OPENAI_MODEL_NAME.fullmatch(name):
        return
    raise InvalidInput(
        f"unknown model {name[:100]!r}; this service runs {ref!r} (GET /v1/models), which any "
        "dall-e-*, gpt-image-* or chatgpt-image-* name also means",
        field="model",
    )


def image_params(body: _ImageOptions, *, size: tuple[int, int] | None) -> Text2ImageParams:
    """The text2image params a request asks for; `size` (width, height), None: the model's."""
    steps = body.num_inference_steps or QUALITY_STEPS.get(body.quality or "auto") or TEXT2IMAGE_DEFAULT_STEPS
    guidance = body.guidance_scale if body.guidance_scale is not None else TEXT2IMAGE_DEFAULT_GUIDANCE
    return Text2ImageParams(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt or None,
        num_images_per_prompt=body.n or 1,
        num_inference_steps=steps,
        guidance_scale=guidance,
        width=size[0] if size else None,
        height=size[1] if size else None,
        seed=resolve_seed(body.seed),
    )


def requested_size(body: _ImageOptions) -> tuple[int, int] | None:
    if body.size in (None, "auto"):
        return None
    width, height = body.size.split("x")
    return int(width), int(height)


def _wants_url(body: _ImageOptions) -> bool:
    if body.response_format is not None:
        return body.response_format == "url"
    return (body.model or "").startswith("dall-e-")  # OpenAI's own default for those models


def _encoded(image: Image.Image, body: _ImageOptions, metadata: dict[str, str] | None) -> bytes:
    quality = body.output_compression if body.output_compression is not None else 100
    return encode_image(image, body.output_format or "png", quality=quality, metadata=metadata)


async def image_data(
    request: web.Request, images: list[Image.Image], params: Text2ImageParams, body: _ImageOptions
) -> list[ImageData]:
    """Each image as base64 or as a stored file's URL, with the PNG parameters of its own seed."""
    model = request.app[WORKER].handle.ref
    own = per_output(params, len(images))
    blobs = await each(
        request.app[IO_POOL],
        _encoded,
        *((image, body, text2image_metadata(p, model=model)) for image, p in zip(images, own, strict=True)),
    )
    if not _wants_url(body):
        return [ImageData(b64_json=base64.b64encode(blob).decode("ascii")) for blob in blobs]
    suffix = "." + (body.output_format or "png")
    data = []
    for k, blob in enumerate(blobs):
        write = lambda path, blob=blob: write_atomic(path, blob)  # noqa: E731
        name = await store_file(request, write, prefix=f"{request_id_var.get()}-{k}", suffix=suffix)
        data.append(ImageData(url=output_url(request, name)))
    return data


async def generations(request: web.Request) -> web.StreamResponse:
    app = request.app
    config, worker = app[CONFIG], app[WORKER]
    async with admitted(request) as deadline:
        async with before_deadline(deadline, config.request_timeout):
            body = await read_json_body(request, ImageGenerationRequest)
        check_model(body.model, worker.handle.ref)
        params = worker.model.complete(image_params(body, size=requested_size(body)))
        if body.stream:
            return await stream_images(request, "image_generation", params, params, body, deadline)
        _job, images = await run_job(request, params, deadline)
        return await answer(request, images, params, body)


async def answer(
    request: web.Request, images: list[Image.Image], params: Text2ImageParams, body: _ImageOptions
) -> web.Response:
    response = ImagesResponse(
        created=int(time.time()),
        data=await image_data(request, images, params, body),
        output_format=body.output_format or "png",
        size=f"{params.width}x{params.height}",
    )
    return await encoded_response(request.app[IO_POOL], response)


# --- streaming ------------------------------------------------------------------------------------


def _sse(event: BaseModel, kind: str) -> bytes:
    return f"event: {kind}\ndata: {event.model_dump_json()}\n\n".encode()


async def stream_images(
    request: web.Request,
    kind: str,
    payload: Payload,
    params: Text2ImageParams,
    body: _ImageOptions,
    deadline: float,
    *,
    steps: int | None = None,
) -> web.StreamResponse:
    """Server-sent events as openai-python parses them: `<kind>.partial_image` for each preview
    (decoded from the latents), then one `<kind>.completed` per image. A failure before the first
    event is an ordinary error response; after it, an `error` event ends the stream."""
    loop, pool = asyncio.get_running_loop(), request.app[IO_POOL]
    previews: asyncio.Queue[list[Image.Image] | None] = asyncio.Queue()

    def deliver(step: int, images: list[Image.Image]) -> None:  # on the worker thread
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening
            loop.call_soon_threadsafe(previews.put_nowait, images)

    # `steps`: what one pipeline call denoises (an edit's are fewer), where previews are spread.
    preview_at = spread_previews(steps or params.num_inference_steps, body.partial_images or 0)
    stream = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",  # nginx: pass each event on at once
            "X-Request-ID": request_id_var.get() or "",
        }
    )
    size, fmt = f"{params.width}x{params.height}", body.output_format or "png"
    common: dict[str, Any] = {"output_format": fmt, "quality": body.quality or "auto", "size": size}

    async def send(event: BaseModel, name: str) -> None:
        if not stream.prepared:
            await stream.prepare(request)
        await stream.write(_sse(event, name))

    async def pump() -> None:
        index = 0
        while (images := await previews.get()) is not None:
            for blob in await each(pool, _encoded, *((image, body, None) for image in images)):
                event = PartialImageEvent(
                    type=f"{kind}.partial_image",
                    b64_json=base64.b64encode(blob).decode("ascii"),
                    created_at=int(time.time()),
                    partial_image_index=index,
                    **common,
                )
                await send(event, event.type)
            index += 1

    pumping = asyncio.create_task(pump())
    try:
        try:
            _job, images = await run_job(
                request, payload, deadline, previews=Previews(preview_at, deliver) if preview_at else None
            )
        finally:
            previews.put_nowait(None)
        await pumping
        model = request.app[WORKER].handle.ref
        own = per_output(params, len(images))
        metadata = (text2image_metadata(p, model=model) for p in own)
        for blob in await each(
            pool, _encoded, *((im, body, m) for im, m in zip(images, metadata, strict=True))
        ):
            done = CompletedEvent(
                type=f"{kind}.completed",
                b64_json=base64.b64encode(blob).decode("ascii"),
                created_at=int(time.time()),
                **common,
            )
            await send(done, done.type)
    except Cancelled:
        raise
    except OpeaMediaError as exc:
        pumping.cancel()
        if not stream.prepared:
            raise  # nothing sent yet: the error middleware answers
        error = OPENAI.build(Failure(exc.http_status, exc.detail, getattr(exc, "field", None)))
        with contextlib.suppress(ConnectionError):
            await stream.write(f"event: error\ndata: {error.model_dump_json()}\n\n".encode())
    except ConnectionError:
        return stream  # the client left mid-stream; its job was cancelled with it
    finally:
        pumping.cancel()
    with contextlib.suppress(ConnectionError):
        await send_eof(stream, request)
    return stream


async def send_eof(stream: web.StreamResponse, request: web.Request) -> None:
    if not stream.prepared:
        await stream.prepare(request)
    await stream.write_eof()


# --- models -----------------------------------------------------------------------------------------


def _the_model(request: web.Request) -> OpenAIModel:
    return OpenAIModel(id=request.app[WORKER].handle.ref, created=int(request.app[STARTED_AT]))


async def list_models(request: web.Request) -> web.Response:
    return web.Response(
        text=ModelList(data=[_the_model(request)]).model_dump_json(), content_type="application/json"
    )


async def retrieve_model(request: web.Request) -> web.Response:
    name = request.match_info["model"]
    if name not in model_names(request.app[WORKER].handle.ref):
        raise NotFound(f"no model {name[:100]!r}; this service runs {request.app[WORKER].handle.ref!r}")
    return web.Response(text=_the_model(request).model_dump_json(), content_type="application/json")
