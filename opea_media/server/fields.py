"""The request fields of each endpoint, declared once: the parser (schemas.py) and the OpenAPI
document (openapi.py) both read them. Rules and defaults come from params.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import MISSING, dataclass
from typing import Any

from ..errors import InvalidInput
from ..params import (
    IMAGE2VIDEO_RULES,
    TEXT2IMAGE_RULES,
    Image2VideoParams,
    Rule,
    Text2ImageParams,
    field_defaults,
)

# Each image becomes one clip, run one after the other: a request must stay a bounded amount of work.
MAX_IMAGES_PER_REQUEST = 4
IMAGE_ENTRY_FIELDS = ("image_path",)


@dataclass(frozen=True)
class ImageList:
    """images_path: 1..max_items objects like {"image_path": "<URL, data URI or base64>"}."""

    max_items: int

    def parse(self, field: str, entries: Any) -> list[str]:
        if not isinstance(entries, list):
            raise InvalidInput(
                f'must be a list of {{"image_path": ...}} objects, not {json_type(entries)}', field=field
            )
        if not entries:
            raise InvalidInput("must hold at least one image", field=field)
        if len(entries) > self.max_items:
            raise InvalidInput(
                f"holds {len(entries)} images; the limit is {self.max_items} per request", field=field
            )
        sources = []
        for index, entry in enumerate(entries):
            where = f"{field}[{index}]"
            if not isinstance(entry, dict):
                raise InvalidInput(
                    f'must be an object like {{"image_path": ...}}, not {json_type(entry)}', field=where
                )
            refuse_unknown(entry, IMAGE_ENTRY_FIELDS, where=f" in {where}")
            source = entry.get("image_path")
            if not isinstance(source, str) or not source.strip():
                raise InvalidInput(
                    "must be a non-empty string: an http(s) URL, a data URI or base64",
                    field=f"{where}.image_path",
                )
            sources.append(source)
        return sources


@dataclass(frozen=True)
class NullOnly:
    """A field of OPEA's request type that this service does not support: only null is accepted."""

    reason: str


FieldRule = Rule | ImageList | NullOnly


@dataclass(frozen=True)
class RequestField:
    """One field of a request body: its rule, default and meaning.

    Every field may be null (or left out), which means its default, except a required one.
    """

    name: str
    rule: FieldRule
    description: str
    required: bool = False
    default: Any = None  # None: decided when the request runs (`when_null` says how)
    when_null: str | None = None


def _params_fields(
    params_type: type, rules: dict[str, Rule], descriptions: dict[str, str | tuple[str, str]]
) -> tuple[RequestField, ...]:
    """Fields whose rule and default are those of a params type: declared in params.py, nowhere else."""
    defaults = field_defaults(params_type)
    built = []
    for name, text in descriptions.items():
        description, when_null = text if isinstance(text, tuple) else (text, None)
        default = defaults[name]
        built.append(
            RequestField(
                name=name,
                rule=rules[name],
                description=description,
                required=default is MISSING,
                default=None if default is MISSING else default,
                when_null=when_null,
            )
        )
    return tuple(built)


LORA_FIELD = "lora_weight_name_or_path"
# OPEA's text2image request type (SDInputs), in its order; every optional field may be null.
TEXT2IMAGE_REQUEST: tuple[RequestField, ...] = (
    *_params_fields(
        Text2ImageParams,
        TEXT2IMAGE_RULES,
        {
            "prompt": "What to draw.",
            "num_images_per_prompt": "How many images to make; image k uses seed `seed + k`.",
            "seed": ("The seed of the first image.", "a random seed, reported in the response"),
            "num_inference_steps": "Denoising steps: more is slower and usually finer.",
            "guidance_scale": "How closely to follow the prompt (classifier-free guidance).",
            "negative_prompt": ("What to keep out of the image.", "no negative prompt"),
            "height": ("Image height in pixels.", "the model's native size (768 for SD 2.1)"),
            "width": ("Image width in pixels.", "the model's native size (768 for SD 2.1)"),
        },
    ),
    RequestField(
        LORA_FIELD,
        NullOnly("LoRA weights are not supported by this service; send null or leave it out"),
        "Part of OPEA's request type; only null is accepted.",
    ),
)
IMAGE2VIDEO_REQUEST: tuple[RequestField, ...] = (
    RequestField(
        "images_path",
        ImageList(MAX_IMAGES_PER_REQUEST),
        "The input images, one clip each, clip k with seed `seed + k`.",
        required=True,
    ),
    *_params_fields(
        Image2VideoParams,
        IMAGE2VIDEO_RULES,
        {
            "num_frames": ("Frames per clip.", "the model's frame count (25 for SVD-XT)"),
            "fps": "Frames per second the clip is conditioned on.",
            "motion_bucket_id": "How much motion: higher moves more.",
            "noise_aug_strength": "Noise added to the input image: higher strays further from it.",
            "decode_chunk_size": ("Frames decoded at once: less memory, slower.", "all frames at once"),
            "num_inference_steps": "Denoising steps.",
            "seed": ("The seed of the first clip.", "a random seed, reported in the response"),
            "height": ("Clip height in pixels.", "the model's native size (576 for SVD)"),
            "width": ("Clip width in pixels.", "the model's native size (1024 for SVD)"),
        },
    ),
)
TEXT2IMAGE_FIELDS = tuple(field.name for field in TEXT2IMAGE_REQUEST)
IMAGE2VIDEO_FIELDS = tuple(field.name for field in IMAGE2VIDEO_REQUEST)


def json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null"}
    return names.get(type(value), "a number")


_SHOWN_UNKNOWN = 5  # a body of 100,000 made-up keys must not make an error message of megabytes
_SHOWN_NAME_CHARS = 60


def refuse_unknown(data: dict[str, Any], accepted: Sequence[str], *, where: str = "") -> None:
    unknown = [key for key in data if key not in accepted]
    if unknown:
        shown = [
            repr(key if len(key) <= _SHOWN_NAME_CHARS else key[:_SHOWN_NAME_CHARS] + "...") for key in unknown
        ]
        names = ", ".join(shown[:_SHOWN_UNKNOWN])
        if len(unknown) > _SHOWN_UNKNOWN:
            names += f" and {len(unknown) - _SHOWN_UNKNOWN} more"
        noun = "field" if len(unknown) == 1 else "fields"
        raise InvalidInput(f"unknown {noun} {names}{where}; accepted fields: {', '.join(accepted)}")
