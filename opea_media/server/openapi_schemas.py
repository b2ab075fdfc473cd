"""The JSON Schemas of the OpenAPI document: request fields read from the same rules the parser
applies (fields.py, params.py), and the response bodies."""

from __future__ import annotations

from typing import Any

from ..media.images import ALLOWED_INPUT_FORMATS, MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MIN_INPUT_SIDE
from ..params import (
    FPS,
    IMAGE_SIDE,
    NO_NUL_PATTERN,
    NOT_BLANK_PATTERN,
    NUM_FRAMES,
    NUM_IMAGES,
    SEED,
    STEPS,
    Limit,
    Number,
    Text,
)
from .config import ServerConfig
from .fields import IMAGE2VIDEO_REQUEST, TEXT2IMAGE_REQUEST, ImageList, NullOnly, RequestField


def ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _number(limit: Limit, *, integer: bool) -> dict[str, Any]:
    def bound(x: float) -> float | int:
        return int(x) if integer else x

    schema: dict[str, Any] = {
        "type": "integer" if integer else "number",
        "minimum": bound(limit.min),
        "maximum": bound(limit.max),
    }
    if limit.multiple_of:
        schema["multipleOf"] = limit.multiple_of
    return schema


def _text(rule: Text) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string", "maxLength": rule.max_chars}
    if rule.allow_blank:
        schema["pattern"] = NO_NUL_PATTERN
    else:
        schema["minLength"] = 1
        schema["allOf"] = [{"pattern": NOT_BLANK_PATTERN}, {"pattern": NO_NUL_PATTERN}]
    return schema


def field_schema(field: RequestField) -> dict[str, Any]:
    """The JSON Schema of one request field, read from the same rule the parser applies."""
    rule = field.rule
    if isinstance(rule, NullOnly):
        return {"type": "null", "description": f"{field.description} {rule.reason}."}
    if isinstance(rule, ImageList):
        schema: dict[str, Any] = {
            "type": "array",
            "minItems": 1,
            "maxItems": rule.max_items,
            "items": ref("schemas", "ImageInput"),
        }
    elif isinstance(rule, Number):
        schema = _number(rule.limit, integer=rule.integer)
    else:
        schema = _text(rule)
    description = field.description
    if not field.required:
        schema["type"] = [schema["type"], "null"]
        if field.default is not None:
            schema["default"] = field.default
            description += " Null or absent: the default."
        elif field.when_null:
            description += f" Null or absent: {field.when_null}."
    return {**schema, "description": description}


def request_schema(fields: tuple[RequestField, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": [field.name for field in fields if field.required],
        "properties": {field.name: field_schema(field) for field in fields},
    }


def _image_input() -> dict[str, Any]:
    formats = ", ".join(ALLOWED_INPUT_FORMATS)
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["image_path"],
        "properties": {
            "image_path": {
                "type": "string",
                "pattern": NOT_BLANK_PATTERN,
                "description": (
                    "An http(s) URL, a data URI (data:image/png;base64,...) or plain base64 "
                    "(standard or URL-safe). Never a file path. The image must be "
                    f"{formats}, decode to at most {MAX_INPUT_BYTES} bytes, have at most "
                    f"{MAX_INPUT_PIXELS} pixels and sides of at least {MIN_INPUT_SIDE} pixels; "
                    "URLs must reach public addresses only. Anything else is a 400 naming this field."
                ),
                "x-max-bytes": MAX_INPUT_BYTES,
                "x-max-pixels": MAX_INPUT_PIXELS,
                "x-min-side": MIN_INPUT_SIDE,
                "x-formats": list(ALLOWED_INPUT_FORMATS),
            }
        },
    }


def _seconds() -> dict[str, Any]:
    return {"type": ["number", "null"], "minimum": 0}


def _base64_png() -> dict[str, Any]:
    return {"type": "string", "contentEncoding": "base64", "contentMediaType": "image/png"}


def _success(properties: dict[str, Any]) -> dict[str, Any]:
    common = {
        "status": {"const": "success"},
        "message": {"type": "string"},
        "seed": _number(SEED, integer=True),
        "seeds": {"type": "array", "items": _number(SEED, integer=True)},
        "model": {"type": "string"},
        "width": _number(IMAGE_SIDE, integer=True),
        "height": _number(IMAGE_SIDE, integer=True),
        "num_inference_steps": _number(STEPS, integer=True),
        "queue_seconds": _seconds(),
        "inference_seconds": _seconds(),
    }
    merged = {**common, **properties}
    return {"type": "object", "required": list(merged), "properties": merged}


def component_schemas(config: ServerConfig) -> dict[str, Any]:
    service = {"const": config.service}
    return {
        "Error": {
            "type": "object",
            "additionalProperties": False,
            "required": ["detail", "status_code"],
            "properties": {
                "detail": {"type": "string", "description": "What went wrong, for a person."},
                "status_code": {"type": "integer", "minimum": 400, "maximum": 599},
            },
            "description": "Every error; status_code equals the HTTP status.",
        },
        "Text2ImageRequest": request_schema(TEXT2IMAGE_REQUEST),
        "Image2VideoRequest": request_schema(IMAGE2VIDEO_REQUEST),
        "ImageInput": _image_input(),
        "Text2ImageResponse": _success(
            {
                "images": {
                    "type": "array",
                    "minItems": int(NUM_IMAGES.min),
                    "maxItems": int(NUM_IMAGES.max),
                    "items": _base64_png(),
                },
                "guidance_scale": {"type": "number"},
            }
        ),
        "Image2VideoResponse": _success(
            {
                "frames": {"type": "array", "items": _base64_png(), "description": "Every clip's frames."},
                "frames_per_clip": {"type": "array", "items": _number(NUM_FRAMES, integer=True)},
                "fps": _number(FPS, integer=True),
            }
        ),
        "Healthy": {
            "type": "object",
            "required": ["status", "service", "model", "queue_depth", "running"],
            "properties": {
                "status": {"const": "healthy"},
                "service": service,
                "model": {"type": "string"},
                "queue_depth": {"type": "integer", "minimum": 0},
                "running": {"type": "integer", "minimum": 0},
            },
        },
        "Alive": {"type": "object", "required": ["status"], "properties": {"status": {"const": "alive"}}},
        "Dead": {
            "type": "object",
            "required": ["status", "detail", "status_code"],
            "properties": {
                "status": {"const": "failed"},
                "detail": {"type": "string"},
                "status_code": {"const": 503},
            },
        },
        "Unhealthy": {
            "type": "object",
            "required": ["status", "detail", "status_code", "service", "model"],
            "properties": {
                "status": {"enum": ["loading", "failed", "draining"]},
                "detail": {"type": "string"},
                "status_code": {"const": 503},
                "service": service,
                "model": {"type": "string"},
            },
        },
    }
