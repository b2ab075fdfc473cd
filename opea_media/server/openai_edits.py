"""POST /v1/images/edits (the OpenAI Images API, multipart): image-to-image, and inpainting with a
mask, on the loaded model's own components, through the one worker queue."""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import re
from typing import Any

from aiohttp import web
from multidict import MultiDictProxy
from PIL import Image

from ..errors import InvalidInput
from ..media.images import decode_image, decode_mask
from ..params import NUM_IMAGES, TEXT2IMAGE_DEFAULT_STRENGTH, size_like
from .bodies import body_deadline, body_done
from .jobs import EditRequest
from .keys import CONFIG, IO_POOL, WORKER
from .openai_api import answer, check_model, image_params, requested_size, stream_images
from .openai_wire import ImageEditRequest
from .running import admitted, before_deadline, each, run_job
from .validation import validate

MULTIPART = "multipart/form-data"
_FILES = ("image", "image[]", "mask")
_INTEGERS = ("n", "output_compression", "partial_images", "seed", "num_inference_steps")
_NUMBERS = ("strength", "guidance_scale")
_INTEGER = re.compile(r"[+-]?[0-9]{1,30}")
_NUMBER = re.compile(r"[+-]?([0-9]{1,30}(\.[0-9]{0,30})?|\.[0-9]{1,30})([eE][+-]?[0-9]{1,3})?")


def _typed(name: str, text: str) -> Any:
    """A form field's text as the JSON value it stands for; anything else is left for the rules to
    refuse in their own words ("n: must be an integer, got '2x'")."""
    if name in _INTEGERS and _INTEGER.fullmatch(text):
        return int(text)
    if name in _NUMBERS and _NUMBER.fullmatch(text):
        return float(text)
    if name == "stream" and text.lower() in ("true", "false"):
        return text.lower() == "true"
    return text


async def read_edit_form(request: web.Request) -> ImageEditRequest:
    """The form as an ImageEditRequest; 415 if it is no multipart form, 413 over the size limit,
    408 past the body timeout."""
    # A form without files comes urlencoded; it is still a form (and then lacks its image).
    if request.content_type not in (MULTIPART, "application/x-www-form-urlencoded"):
        sent = request.content_type if "Content-Type" in request.headers else "no Content-Type"
        raise web.HTTPUnsupportedMediaType(
            text=f"send the request as {MULTIPART} (as the SDKs do), not {sent}"
        )
    config = request.app[CONFIG]
    max_bytes = config.max_body_bytes
    if request.content_length is not None and request.content_length > max_bytes:
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    try:
        async with body_deadline(config.body_timeout):
            form: MultiDictProxy[Any] = await request.post()  # over client_max_size: aiohttp's 413
    except ValueError as exc:
        raise InvalidInput(f"the form could not be read: {exc}") from None
    return await asyncio.get_running_loop().run_in_executor(request.app[IO_POOL], _edit_request, form)


def _edit_request(form: MultiDictProxy[Any]) -> ImageEditRequest:
    """The form's fields typed, its files read (aiohttp spooled them to disk), validated."""
    data: dict[str, Any] = {}
    for name, value in form.items():
        if name in _FILES:
            content = value.file.read() if isinstance(value, web.FileField) else str(value).encode()
            if name == "image[]":
                data.setdefault(name, []).append(content)
                continue
            value = content
        elif isinstance(value, web.FileField):
            raise InvalidInput("must be a form field, not a file", field=name)
        else:
            value = _typed(name, value)
        if name in data:
            raise InvalidInput("is given more than once", field=name)
        data[name] = value
    return validate(ImageEditRequest, data)


async def edits(request: web.Request) -> web.StreamResponse:
    app = request.app
    config, worker = app[CONFIG], app[WORKER]
    async with admitted(request) as deadline:
        async with before_deadline(deadline, config.request_timeout):
            body, images, mask = await _edit_inputs(request)
        body_done(request)
        size = requested_size(body)
        if size is None:  # "auto": the first image's shape at the model's own area
            height, width = worker.model.native_size
            size = size_like(*images[0].size, area=height * width)
        strength = body.strength if body.strength is not None else TEXT2IMAGE_DEFAULT_STRENGTH
        params = worker.model.complete(dataclasses.replace(image_params(body, size=size), strength=strength))
        payload = EditRequest(params, tuple(images), mask)
        if body.stream:
            # Previews count the steps an edit really denoises (steps x strength).
            steps = worker.model.edit_steps(params)
            return await stream_images(request, "image_edit", payload, params, body, deadline, steps=steps)
        _job, results = await run_job(request, payload, deadline)
        return await answer(request, results, params, body)


async def _edit_inputs(
    request: web.Request,
) -> tuple[ImageEditRequest, list[Image.Image], Image.Image | None]:
    """The form without its files (nothing after this reads them), its images and its mask, decoded."""
    worker, pool = request.app[WORKER], request.app[IO_POOL]
    body = await read_edit_form(request)
    check_model(body.model, worker.handle.ref)
    sources = ([body.image] if body.image is not None else []) + list(body.images or [])
    if not sources:
        raise InvalidInput(
            "is required: send the image as the form part image (several: image[])", field="image"
        )
    if len(sources) * (body.n or 1) > NUM_IMAGES.max:
        raise InvalidInput(
            f"{len(sources)} images x n={body.n} is more than {int(NUM_IMAGES.max)} results", field="n"
        )
    calls = [(data, f"image {k + 1}") for k, data in enumerate(sources)]
    images = await each(pool, lambda data, source: decode_image(data, source=source), *calls)
    mask = None
    if body.mask is not None:
        decode = functools.partial(decode_mask, body.mask, source="mask", transparent_repaints=True)
        mask = await asyncio.get_running_loop().run_in_executor(pool, decode)
    return body.model_copy(update={"image": None, "images": None, "mask": None}), images, mask
