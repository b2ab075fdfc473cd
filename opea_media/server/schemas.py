"""Request bodies in (JSON -> the params types, 400 naming the field), response bodies out.

Limits and defaults live in params.py, the fields of each endpoint in fields.py.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from ..errors import InvalidInput
from ..params import Image2VideoParams, Number, Text2ImageParams, image_seed
from .fields import (
    IMAGE2VIDEO_REQUEST,
    TEXT2IMAGE_REQUEST,
    ImageList,
    NullOnly,
    RequestField,
    json_type,
    refuse_unknown,
)
from .jobs import Job, VideoRequest

JSON_CONTENT_TYPES = ("application/json",)
INLINE_PARSE_BYTES = 64 * 1024  # smaller bodies parse faster than a hop to the thread pool


def _refuse_constant(name: str) -> Any:
    raise InvalidInput(f"the request body is not valid JSON: {name} is not a JSON number")


async def read_json_object(request: web.Request, pool: Executor, *, max_bytes: int) -> dict[str, Any]:
    """The body as a JSON object; 415 for another content type, 413 over max_bytes, 400 if malformed."""
    content_type = request.content_type
    if content_type not in JSON_CONTENT_TYPES and not content_type.endswith("+json"):
        sent = content_type if "Content-Type" in request.headers else "no Content-Type"
        raise web.HTTPUnsupportedMediaType(
            text=f"send the request as JSON (Content-Type: application/json), not {sent}"
        )
    if request.content_length is not None and request.content_length > max_bytes:
        # Refused before reading a byte: a client that announces 10 GB need not be waited for.
        raise web.HTTPRequestEntityTooLarge(max_size=max_bytes, actual_size=request.content_length)
    body = await request.read()  # a chunked body over the limit: aiohttp raises 413 as it arrives
    if len(body) <= INLINE_PARSE_BYTES:
        return parse_json_object(body)
    # Tens of megabytes of base64 images take a while to parse: not on the event loop.
    return await asyncio.get_running_loop().run_in_executor(pool, parse_json_object, body)


def parse_json_object(body: bytes) -> dict[str, Any]:
    if not body.strip():
        raise InvalidInput("the request body is empty; send a JSON object")
    try:
        data = json.loads(body, parse_constant=_refuse_constant)
    except UnicodeDecodeError:
        raise InvalidInput("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"the request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    except RecursionError:
        raise InvalidInput("the request body is nested too deeply") from None
    except ValueError:
        # Python refuses to convert integers of more than sys.get_int_max_str_digits() digits.
        digits = sys.get_int_max_str_digits()
        message = f"the request body is not valid JSON: a number has more than {digits} digits"
        raise InvalidInput(message) from None
    if not isinstance(data, dict):
        raise InvalidInput(f"the request body must be a JSON object, not {json_type(data)}")
    return data


async def json_body_response(payload: dict[str, Any], pool: Executor) -> web.Response:
    """A 200 JSON response serialised off the event loop (a clip's frames are tens of megabytes)."""
    body = await asyncio.get_running_loop().run_in_executor(pool, _dumps, payload)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode("utf-8")


def _collect(data: dict[str, Any], request_fields: Sequence[RequestField]) -> dict[str, Any]:
    """The sent values by field name, checked against the fields' rules; null means "the default"."""
    refuse_unknown(data, [field.name for field in request_fields])
    for field in request_fields:
        if isinstance(field.rule, NullOnly) and data.get(field.name) is not None:
            raise InvalidInput(field.rule.reason, field=field.name)
    values: dict[str, Any] = {}
    for field in request_fields:
        value = data.get(field.name)
        if value is None:
            if field.required:
                raise InvalidInput("is required", field=field.name)
            continue
        if isinstance(field.rule, ImageList):
            value = field.rule.parse(field.name, value)
        elif isinstance(field.rule, Number) and field.rule.integer and _integral_float(value):
            value = int(value)  # JSON Schema's integer: 2.0 is the integer 2
        if not isinstance(field.rule, NullOnly):
            values[field.name] = value
    return values


def _integral_float(value: Any) -> bool:
    return isinstance(value, float) and value.is_integer()


def parse_text2image(data: dict[str, Any]) -> Text2ImageParams:
    return Text2ImageParams(**_collect(data, TEXT2IMAGE_REQUEST))


def parse_image2video(data: dict[str, Any]) -> tuple[list[str], Image2VideoParams]:
    """The image sources, in order, and the parameters every clip shares."""
    values = _collect(data, IMAGE2VIDEO_REQUEST)
    sources = values.pop("images_path")
    return sources, Image2VideoParams(**values)


def _timings(job: Job) -> dict[str, float | None]:
    def rounded(seconds: float | None) -> float | None:
        return None if seconds is None else round(seconds, 3)

    return {"queue_seconds": rounded(job.queue_seconds), "inference_seconds": rounded(job.inference_seconds)}


def text2image_response(
    params: Text2ImageParams, images: list[str], *, job: Job, model: str
) -> dict[str, Any]:
    """The OPEA response plus what makes the result repeatable (every image's seed, the size)."""
    assert params.seed is not None
    seconds = job.inference_seconds or 0.0
    count = f"{len(images)} image{'s' if len(images) != 1 else ''}"
    return {
        "status": "success",
        "images": images,
        "message": f"Generated {count} in {seconds:.2f} s",
        "seed": params.seed,
        "seeds": [image_seed(params.seed, i) for i in range(len(images))],
        "model": model,
        "width": params.width,
        "height": params.height,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        **_timings(job),
    }


def image2video_response(
    request: VideoRequest, clips: list[list[str]], *, seed: int, job: Job, model: str
) -> dict[str, Any]:
    """Every frame of every clip in order in `frames`; `frames_per_clip` says where each clip ends."""
    first = request.params[0]
    seconds = job.inference_seconds or 0.0
    total = sum(len(clip) for clip in clips)
    what = f"{len(clips)} clip{'s' if len(clips) != 1 else ''} ({total} frames)"
    return {
        "status": "success",
        "frames": [frame for clip in clips for frame in clip],
        "message": f"Generated {what} in {seconds:.2f} s",
        "frames_per_clip": [len(clip) for clip in clips],
        "fps": first.fps,
        "seed": seed,
        "seeds": [p.seed for p in request.params],
        "model": model,
        "width": first.width,
        "height": first.height,
        "num_inference_steps": first.num_inference_steps,
        **_timings(job),
    }
