"""The services' request and response bodies as pydantic models: validation and JSON Schema both.

Limits, defaults and text rules come from params.py (validation.py applies them), so /openapi.json
shows the limits the handlers enforce. Every optional field of OPEA's request types may be null,
which means its default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, GetJsonSchemaHandler, model_validator
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ..config import Task
from ..media.images import ALLOWED_INPUT_FORMATS, MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MIN_INPUT_SIDE
from ..params import (
    IMAGE2VIDEO_RULES,
    MAX_IMAGES_PER_REQUEST,
    NOT_BLANK_PATTERN,
    TEXT2IMAGE_RULES,
    Image2VideoParams,
    Text2ImageParams,
    field_defaults,
)
from .validation import Body, Ruled, SchemaExtra, json_type, refuse

# --- requests -------------------------------------------------------------------------------------

_T2I_DEFAULTS = field_defaults(Text2ImageParams)
_I2V_DEFAULTS = field_defaults(Image2VideoParams)


def _t2i(name: str, description: str) -> Any:
    return Field(default=_T2I_DEFAULTS[name], description=description)


def _i2v(name: str, description: str) -> Any:
    return Field(default=_I2V_DEFAULTS[name], description=description)


T2I = TEXT2IMAGE_RULES
I2V = IMAGE2VIDEO_RULES


def _null_only(value: Any) -> None:
    if value is not None:
        raise refuse("LoRA weights are not supported by this service; send null or leave it out")


NEGATIVE_PROMPT_SEPARATOR = ", "


def _joined(value: Any) -> Any:
    """A list of negative prompts as the one text the pipeline takes (then checked by its rule)."""
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return NEGATIVE_PROMPT_SEPARATOR.join(item for item in value if item.strip())
    return value


@dataclass(frozen=True)
class _OrListOfIt:
    """Annotated metadata: the schema says "this, or a list of these"."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        one = handler(schema)
        return {"anyOf": [one, {"type": "array", "items": one}]}


NegativePrompt = Annotated[str, Ruled(T2I["negative_prompt"]), BeforeValidator(_joined), _OrListOfIt()]


class Text2ImageRequest(Body):
    """OPEA's text2image request (SDInputs), field for field."""

    prompt: Annotated[str, Ruled(T2I["prompt"])] = Field(description="What to draw.")
    num_images_per_prompt: Annotated[int, Ruled(T2I["num_images_per_prompt"])] | None = _t2i(
        "num_images_per_prompt", "How many images to make; image k uses seed `seed + k`."
    )
    seed: Annotated[int, Ruled(T2I["seed"])] | None = _t2i(
        "seed", "The seed of the first image. Null or absent: a random seed, reported in the response."
    )
    num_inference_steps: Annotated[int, Ruled(T2I["num_inference_steps"])] | None = _t2i(
        "num_inference_steps", "Denoising steps: more is slower and usually finer."
    )
    guidance_scale: Annotated[float, Ruled(T2I["guidance_scale"])] | None = _t2i(
        "guidance_scale", "How closely to follow the prompt (classifier-free guidance)."
    )
    negative_prompt: NegativePrompt | None = _t2i(
        "negative_prompt",
        "What to keep out of the image; a list (OPEA's SDInputs allows one) is joined with ', '. "
        "Null or absent: no negative prompt.",
    )
    height: Annotated[int, Ruled(T2I["height"])] | None = _t2i(
        "height", "Image height in pixels. Null or absent: the model's native size (768 for SD 2.1)."
    )
    width: Annotated[int, Ruled(T2I["width"])] | None = _t2i(
        "width", "Image width in pixels. Null or absent: the model's native size (768 for SD 2.1)."
    )
    lora_weight_name_or_path: Annotated[None, BeforeValidator(_null_only)] = Field(
        default=None, description="Part of OPEA's request type; LoRA weights are not supported: only null."
    )

    def params(self) -> Text2ImageParams:
        return _params(Text2ImageParams, self)


def _image_source(value: Any) -> Any:
    if not isinstance(value, str) or not re.search(NOT_BLANK_PATTERN, value):
        raise refuse("must be a non-empty string: an http(s) URL, a data URI or base64")
    return value


class ImageInput(Body):
    """One input image of an image2video request (OPEA's ImagesPath entry)."""

    image_path: Annotated[
        str,
        BeforeValidator(_image_source),
        SchemaExtra(
            {
                "pattern": NOT_BLANK_PATTERN,
                "x-max-bytes": MAX_INPUT_BYTES,
                "x-max-pixels": MAX_INPUT_PIXELS,
                "x-min-side": MIN_INPUT_SIDE,
                "x-formats": list(ALLOWED_INPUT_FORMATS),
            }
        ),
    ] = Field(
        description=(
            "An http(s) URL, a data URI (data:image/png;base64,...) or plain base64 (standard or "
            f"URL-safe). Never a file path. The image must be {', '.join(ALLOWED_INPUT_FORMATS)}, decode "
            f"to at most {MAX_INPUT_BYTES} bytes, have at most {MAX_INPUT_PIXELS} pixels and sides of at "
            f"least {MIN_INPUT_SIDE} pixels; URLs must reach public addresses only."
        )
    )

    @model_validator(mode="before")
    @classmethod
    def _an_object(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            raise refuse(f'must be an object like {{"image_path": ...}}, not {json_type(data)}')
        return data


def _image_list(value: Any) -> Any:
    if value is None:
        raise refuse("is required")
    if not isinstance(value, list):
        raise refuse(f'must be a list of {{"image_path": ...}} objects, not {json_type(value)}')
    if not value:
        raise refuse("must hold at least one image")
    if len(value) > MAX_IMAGES_PER_REQUEST:
        raise refuse(f"holds {len(value)} images; the limit is {MAX_IMAGES_PER_REQUEST} per request")
    return value


class Image2VideoRequest(Body):
    """OPEA's image2video request (ImagesPath plus SVD's parameters)."""

    images_path: Annotated[
        list[ImageInput], BeforeValidator(_image_list), Field(min_length=1, max_length=MAX_IMAGES_PER_REQUEST)
    ] = Field(description="The input images, one clip each, clip k with seed `seed + k`.")
    num_frames: Annotated[int, Ruled(I2V["num_frames"])] | None = _i2v(
        "num_frames", "Frames per clip. Null or absent: the model's frame count (25 for SVD-XT)."
    )
    fps: Annotated[int, Ruled(I2V["fps"])] | None = _i2v(
        "fps", "Frames per second the clip is conditioned on."
    )
    motion_bucket_id: Annotated[int, Ruled(I2V["motion_bucket_id"])] | None = _i2v(
        "motion_bucket_id", "How much motion: higher moves more."
    )
    noise_aug_strength: Annotated[float, Ruled(I2V["noise_aug_strength"])] | None = _i2v(
        "noise_aug_strength", "Noise added to the input image: higher strays further from it."
    )
    decode_chunk_size: Annotated[int, Ruled(I2V["decode_chunk_size"])] | None = _i2v(
        "decode_chunk_size",
        "Frames decoded at once: less memory, slower. Null or absent: the service's default.",
    )
    num_inference_steps: Annotated[int, Ruled(I2V["num_inference_steps"])] | None = _i2v(
        "num_inference_steps", "Denoising steps."
    )
    seed: Annotated[int, Ruled(I2V["seed"])] | None = _i2v(
        "seed", "The seed of the first clip. Null or absent: a random seed, reported in the response."
    )
    height: Annotated[int, Ruled(I2V["height"])] | None = _i2v(
        "height", "Clip height in pixels. Null or absent: the model's native size (576 for SVD)."
    )
    width: Annotated[int, Ruled(I2V["width"])] | None = _i2v(
        "width", "Clip width in pixels. Null or absent: the model's native size (1024 for SVD)."
    )

    def sources(self) -> list[str]:
        return [entry.image_path for entry in self.images_path]

    def params(self) -> Image2VideoParams:
        return _params(Image2VideoParams, self)


P = TypeVar("P", Text2ImageParams, Image2VideoParams)


def _params(params_type: type[P], body: BaseModel) -> P:
    """The params of a validated body: null fields take the params type's defaults."""
    names = {f.name for f in fields(params_type)}
    return params_type(**{k: v for k, v in body if k in names and v is not None})


# --- responses ------------------------------------------------------------------------------------

Base64Png = Annotated[str, SchemaExtra({"contentEncoding": "base64", "contentMediaType": "image/png"})]


class Outputs(BaseModel):
    """What made a request's outputs: in every OPEA answer, and in a finished job's result."""

    seeds: list[int] = Field(description="Each output's seed: it remakes that output alone.")
    model: str
    width: int
    height: int
    num_inference_steps: int
    queue_seconds: float | None = Field(description="Seconds the job waited for the model.")
    inference_seconds: float | None = Field(description="Seconds the pipeline call took.")


class _Result(Outputs):
    id: str = Field(description="The request's id (X-Request-ID), as OPEA's responses carry one.")
    status: Literal["success"] = "success"
    message: str
    seed: int = Field(description="The seed of the first output; output k used `seeds[k]`.")


class Text2ImageResponse(_Result):
    images: list[Base64Png] = Field(description="PNG images, each with its parameters as text chunks.")
    guidance_scale: float


class Image2VideoResponse(_Result):
    frames: list[Base64Png] = Field(description="Every clip's frames, in order.")
    frames_per_clip: list[int] = Field(description="Where each clip ends in `frames`.")
    fps: int
    video_path: str = Field(
        description="The first clip as an MP4, to GET from this path (OPEA's field; the name ends in "
        "generated.mp4). Kept for the service's output retention time."
    )
    videos: list[str] = Field(description="Every clip's MP4 path, in order.")


class ErrorBody(BaseModel):
    """Every error; status_code equals the HTTP status."""

    model_config = ConfigDict(extra="forbid")

    detail: str = Field(description="What went wrong, for a person.")
    status_code: int = Field(ge=400, le=599)


class Healthy(BaseModel):
    status: Literal["healthy"] = "healthy"
    service: Task
    model: str
    queue_depth: int = Field(ge=0)
    running: int = Field(ge=0)


class Unhealthy(BaseModel):
    status: Literal["loading", "failed", "draining"]
    detail: str
    status_code: Literal[503] = 503
    service: Task
    model: str


class Alive(BaseModel):
    status: Literal["alive"] = "alive"


class OpeaHealthCheck(BaseModel):
    """What every OPEA microservice answers on GET /v1/health_check."""

    model_config = ConfigDict(validate_by_name=True, serialize_by_alias=True)

    service_title: str = Field(alias="Service Title")
    version: str = Field(alias="Version")
    service_description: str = Field(alias="Service Description")


class Dead(BaseModel):
    status: Literal["failed"] = "failed"
    detail: str
    status_code: Literal[503] = 503
