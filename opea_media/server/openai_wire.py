"""The OpenAI Images API's request and response bodies (openai-python's `images.generate`,
`images.edit` and `models`), with this service's extras: seed, negative_prompt, steps, guidance.

Fields OpenAI defines that mean nothing for Stable Diffusion (style, user, moderation, ...) are
accepted and ignored, so the SDKs' calls need no change; unknown fields are refused, as OpenAI
refuses them. Limits are params.py's.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool

from ..params import MAX_IMAGES_PER_REQUEST, OUTPUT_COMPRESSION, PARTIAL_IMAGES, Number
from .validation import Body, Ruled, SchemaExtra, json_type, refuse
from .wire import T2I, NegativePrompt

_SIZE = re.compile(r"([0-9]{1,6})x([0-9]{1,6})")
SIZE_PATTERN = "^(auto|[0-9]{1,6}x[0-9]{1,6})$"


def _size(value: Any) -> Any:
    if not isinstance(value, str):
        raise refuse(f"must be 'auto' or WIDTHxHEIGHT such as '512x512', not {json_type(value)}")
    if value == "auto":
        return value
    match = _SIZE.fullmatch(value)
    if not match:
        raise refuse(f"must be 'auto' or WIDTHxHEIGHT such as '512x512', got {value[:40]!r}")
    for name, side in zip(("width", "height"), match.groups(), strict=True):
        problem = T2I[name].problem(int(side))
        if problem:
            raise refuse(f"its {name} {problem}")
    return value


Size = Annotated[
    str,
    BeforeValidator(_size),
    SchemaExtra(
        {
            "pattern": SIZE_PATTERN,
            "description": "'auto' (the model's native size; for edits, the input's shape at that area) or "
            "WIDTHxHEIGHT, each side a multiple of 8 from 64 to 2048.",
        }
    ),
]
Quality = Literal["auto", "standard", "hd", "low", "medium", "high"]
OutputFormat = Literal["png", "jpeg", "webp"]
Ignored = Annotated[str, SchemaExtra({"description": "Accepted for compatibility and ignored."})]


class _ImageOptions(Body):
    """What generations and edits share."""

    prompt: Annotated[str, Ruled(T2I["prompt"])] = Field(description="What to draw.")
    model: str | None = Field(
        default=None,
        description="The loaded model's id (GET /v1/models), or any OpenAI image model name "
        "(dall-e-*, gpt-image-*, chatgpt-image-*), which means the loaded model.",
    )
    n: Annotated[int, Ruled(T2I["num_images_per_prompt"])] | None = Field(
        default=1, description="How many images; image k uses seed `seed + k`."
    )
    size: Size | None = "auto"
    response_format: Literal["b64_json", "url"] | None = Field(
        default=None,
        description="b64_json (the default), or url: a link to GET /v1/outputs/..., kept for the "
        "service's output retention time. With a dall-e-* model and no response_format: url, as "
        "OpenAI answers those.",
    )
    output_format: OutputFormat | None = "png"
    output_compression: Annotated[int, Ruled(Number(OUTPUT_COMPRESSION, integer=True))] | None = Field(
        default=100, description="JPEG and WebP quality, 100 the best; PNGs are lossless."
    )
    quality: Quality | None = Field(
        default="auto",
        description="Denoising steps: low 10, medium and standard 25, high and hd 50, auto the "
        "service's default (25). num_inference_steps overrides it.",
    )
    stream: StrictBool | None = Field(
        default=False,
        description="Server-sent events: partial images, then one completed event per image.",
    )
    partial_images: Annotated[int, Ruled(Number(PARTIAL_IMAGES, integer=True))] | None = Field(
        default=0, description="Previews per image, decoded from the latents while denoising (stream only)."
    )
    background: Literal["auto", "opaque"] | None = Field(
        default=None, description="Images are always opaque."
    )
    user: Ignored | None = None
    moderation: Ignored | None = None
    safety_identifier: Ignored | None = None
    # Ours, beyond OpenAI's.
    seed: Annotated[int, Ruled(T2I["seed"])] | None = Field(
        default=None, description="The first image's seed; absent: random."
    )
    negative_prompt: NegativePrompt | None = None
    num_inference_steps: Annotated[int, Ruled(T2I["num_inference_steps"])] | None = None
    guidance_scale: Annotated[float, Ruled(T2I["guidance_scale"])] | None = None


class ImageGenerationRequest(_ImageOptions):
    """POST /v1/images/generations (JSON)."""

    style: Ignored | None = None


class ImageData(BaseModel):
    # One of the two, the other left out (not null), as OpenAI answers.
    b64_json: str | None = Field(
        default=None, description="The image, base64 (no data: prefix).", exclude_if=lambda v: v is None
    )
    url: str | None = Field(
        default=None, description="Where to GET it, while it is kept.", exclude_if=lambda v: v is None
    )


class ImagesResponse(BaseModel):
    created: int
    data: list[ImageData]
    output_format: OutputFormat
    size: str = Field(description="WIDTHxHEIGHT of the images.")


class OpenAIModel(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "opea-media"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[OpenAIModel]


class _Event(BaseModel):
    """One server-sent event of a stream (for the document: the stream itself is text/event-stream)."""

    model_config = ConfigDict(extra="forbid")

    type: str
    b64_json: str
    background: Literal["opaque"] = "opaque"
    created_at: int
    output_format: OutputFormat
    quality: str
    size: str


class PartialImageEvent(_Event):
    partial_image_index: int


class Usage(BaseModel):
    input_tokens: int = 0
    output_tokens: int = 0
    total_tokens: int = 0
    input_tokens_details: dict[str, int] = Field(
        default_factory=lambda: {"image_tokens": 0, "text_tokens": 0}
    )


class CompletedEvent(_Event):
    usage: Usage = Field(default_factory=Usage)


class StreamError(BaseModel):
    """The `error` event that ends a stream which failed after it began (the SDKs raise APIError)."""

    error: dict[str, Any]


File = Annotated[bytes, SchemaExtra({"contentMediaType": "application/octet-stream"})]


class ImageEditRequest(_ImageOptions):
    """POST /v1/images/edits (multipart/form-data, numbers and booleans as text, as the SDKs send)."""

    image: File | None = Field(default=None, description="The image to edit (PNG, JPEG, WebP, GIF or BMP).")
    images: list[File] | None = Field(
        default=None,
        alias="image[]",
        max_length=MAX_IMAGES_PER_REQUEST,
        description="Several images (each edited on its own, n results each, in order); the SDKs "
        "send a list, even of one, this way.",
    )
    mask: File | None = Field(
        default=None,
        description="Where to repaint, for the first image: its fully transparent pixels (OpenAI's "
        "convention), or white in a mask without transparency.",
    )
    strength: Annotated[float, Ruled(T2I["strength"])] | None = Field(
        default=None,
        description="How far to move from the image, 0-1; absent: the service's default.",
    )
    input_fidelity: Ignored | None = None
