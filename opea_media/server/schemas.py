"""Request bodies in (JSON -> the params types, 400 naming the field), response bodies out.

Limits live in params.py; this module only knows which fields each endpoint accepts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from concurrent.futures import Executor
from typing import Any

from aiohttp import web

from ..errors import InvalidInput
from ..params import Image2VideoParams, Text2ImageParams, image_seed
from .jobs import Job, VideoRequest

LORA_FIELD = "lora_weight_name_or_path"
# OPEA's text2image request type (SDInputs); every optional field may be null, meaning its default.
TEXT2IMAGE_FIELDS = (
    "prompt",
    "num_images_per_prompt",
    "seed",
    "num_inference_steps",
    "guidance_scale",
    "negative_prompt",
    "height",
    "width",
    LORA_FIELD,
)
IMAGE2VIDEO_FIELDS = (
    "images_path",
    "num_frames",
    "fps",
    "motion_bucket_id",
    "noise_aug_strength",
    "decode_chunk_size",
    "num_inference_steps",
    "seed",
    "height",
    "width",
)
IMAGE_ENTRY_FIELDS = ("image_path",)
# Each image becomes one clip, run one after the other: a request must stay a bounded amount of work.
MAX_IMAGES_PER_REQUEST = 4

JSON_CONTENT_TYPES = ("application/json",)
INLINE_PARSE_BYTES = 64 * 1024  # smaller bodies parse faster than a hop to the thread pool


def _refuse_constant(name: str) -> Any:
    raise InvalidInput(f"the request body is not valid JSON: {name} is not a JSON number")


async def read_json_object(request: web.Request, pool: Executor) -> dict[str, Any]:
    """The body as a JSON object; 415 for another content type, 400 for anything malformed."""
    content_type = request.content_type
    if content_type not in JSON_CONTENT_TYPES and not content_type.endswith("+json"):
        sent = content_type if "Content-Type" in request.headers else "no Content-Type"
        raise web.HTTPUnsupportedMediaType(
            text=f"send the request as JSON (Content-Type: application/json), not {sent}"
        )
    body = await request.read()  # over the body limit: aiohttp raises 413
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
    if not isinstance(data, dict):
        raise InvalidInput(f"the request body must be a JSON object, not {_json_type(data)}")
    return data


async def json_body_response(payload: dict[str, Any], pool: Executor) -> web.Response:
    """A 200 JSON response serialised off the event loop (a clip's frames are tens of megabytes)."""
    body = await asyncio.get_running_loop().run_in_executor(pool, _dumps, payload)
    return web.Response(body=body, content_type="application/json", charset="utf-8")


def _dumps(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload).encode("utf-8")


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


def _refuse_unknown(data: dict[str, Any], accepted: Sequence[str], *, where: str = "") -> None:
    unknown = [key for key in data if key not in accepted]
    if unknown:
        names = ", ".join(repr(key) for key in unknown)
        noun = "field" if len(unknown) == 1 else "fields"
        raise InvalidInput(f"unknown {noun} {names}{where}; accepted fields: {', '.join(accepted)}")


def _present(data: dict[str, Any], names: Sequence[str]) -> dict[str, Any]:
    """The fields that were sent with a value: null means "use the default", like leaving it out."""
    return {name: data[name] for name in names if data.get(name) is not None}


def parse_text2image(data: dict[str, Any]) -> Text2ImageParams:
    _refuse_unknown(data, TEXT2IMAGE_FIELDS)
    if data.get(LORA_FIELD) is not None:
        raise InvalidInput(
            "LoRA weights are not supported by this service; send null or leave it out", field=LORA_FIELD
        )
    if data.get("prompt") is None:
        raise InvalidInput("is required", field="prompt")
    return Text2ImageParams(**_present(data, [f for f in TEXT2IMAGE_FIELDS if f != LORA_FIELD]))


def parse_image2video(data: dict[str, Any]) -> tuple[list[str], Image2VideoParams]:
    """The image sources, in order, and the parameters every clip shares."""
    _refuse_unknown(data, IMAGE2VIDEO_FIELDS)
    entries = data.get("images_path")
    if entries is None:
        raise InvalidInput(
            'is required: a list of {"image_path": "<URL or base64>"} objects', field="images_path"
        )
    if not isinstance(entries, list):
        raise InvalidInput(
            f'must be a list of {{"image_path": ...}} objects, not {_json_type(entries)}', field="images_path"
        )
    if not entries:
        raise InvalidInput("must hold at least one image", field="images_path")
    if len(entries) > MAX_IMAGES_PER_REQUEST:
        raise InvalidInput(
            f"holds {len(entries)} images; the limit is {MAX_IMAGES_PER_REQUEST} per request",
            field="images_path",
        )
    sources = []
    for index, entry in enumerate(entries):
        where = f"images_path[{index}]"
        if not isinstance(entry, dict):
            raise InvalidInput(
                f'must be an object like {{"image_path": ...}}, not {_json_type(entry)}', field=where
            )
        _refuse_unknown(entry, IMAGE_ENTRY_FIELDS, where=f" in {where}")
        source = entry.get("image_path")
        if not isinstance(source, str) or not source.strip():
            raise InvalidInput(
                "must be a non-empty string: an http(s) URL, a data URI or base64",
                field=f"{where}.image_path",
            )
        sources.append(source)
    params = Image2VideoParams(**_present(data, [f for f in IMAGE2VIDEO_FIELDS if f != "images_path"]))
    return sources, params


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
