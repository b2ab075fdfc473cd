"""Generation parameters and their limits: defined once, used by the CLI, the server and its schema."""

from __future__ import annotations

import math
import re
import secrets
from dataclasses import dataclass, fields, replace
from typing import Any, TypeVar

from .errors import InvalidInput


@dataclass(frozen=True)
class Limit:
    """An inclusive numeric range, optionally restricted to multiples of `multiple_of`."""

    min: float
    max: float
    multiple_of: int | None = None

    def problem(self, value: Any, *, integer: bool) -> str | None:
        """What is wrong with `value`, in words; None when it is within the limit."""
        # bool is an int subclass: `true` is not a step count.
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            return f"must be {'an integer' if integer else 'a number'}, got {value!r}"
        if not integer and not math.isfinite(value):
            return f"must be a finite number, got {value!r}"
        if not self.min <= value <= self.max:
            return f"must be between {_fmt(self.min)} and {_fmt(self.max)}, got {value!r}"
        if self.multiple_of and value % self.multiple_of:
            return f"must be a multiple of {self.multiple_of}, got {value!r}"
        return None

    def check(self, field: str, value: Any, *, integer: bool) -> None:
        problem = self.problem(value, integer=integer)
        if problem:
            raise InvalidInput(problem, field=field)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# One source of truth for every request limit.
STEPS = Limit(1, 150)
NUM_IMAGES = Limit(1, 8)
IMAGE_SIDE = Limit(64, 2048, multiple_of=8)  # diffusers needs multiples of 8
GUIDANCE_SCALE = Limit(0.0, 50.0)
SEED = Limit(0, 2**32 - 1)
PROMPT_MAX_CHARS = 10_000
NUM_FRAMES = Limit(2, 128)  # diffusers' SVD pipeline fails on a single frame
FPS = Limit(1, 60)
MOTION_BUCKET_ID = Limit(0, 1023)
NOISE_AUG_STRENGTH = Limit(0.0, 1.0)
DECODE_CHUNK_SIZE = Limit(1, 128)
# Image-to-image and inpainting: how far to move from the input image (diffusers' and A1111's range).
# A run denoises int(steps * strength) steps, and at least one: 0 makes the least change there is.
STRENGTH = Limit(0.0, 1.0)
# image2video: each image becomes one clip, run one after the other; a request stays bounded work.
MAX_IMAGES_PER_REQUEST = 4
# The OpenAI Images API's output options: JPEG/WebP quality, and streamed previews per image.
OUTPUT_COMPRESSION = Limit(0, 100)
PARTIAL_IMAGES = Limit(0, 3)
# Tuning counts: torch threads, text2image images per pipeline call.
TUNING_COUNT = Limit(1, 1024)

SCHEDULERS = ("default", "ddim", "euler", "euler-a", "dpm++", "pndm")

TEXT2IMAGE_DEFAULT_STEPS = 25
TEXT2IMAGE_DEFAULT_GUIDANCE = 7.5
TEXT2IMAGE_DEFAULT_SCHEDULER = "dpm++"
TEXT2IMAGE_DEFAULT_STRENGTH = 0.8  # diffusers' img2img default; A1111 uses 0.75
IMAGE2VIDEO_DEFAULT_STEPS = 25
IMAGE2VIDEO_DEFAULT_FPS = 7
IMAGE2VIDEO_DEFAULT_MOTION_BUCKET_ID = 127
IMAGE2VIDEO_DEFAULT_NOISE_AUG_STRENGTH = 0.02


def preview_steps(steps: int, previews: int) -> tuple[int, ...]:
    """The (1-based) steps after which to show `previews` partial images, spread evenly before the
    last step; fewer when there are too few steps (a 2-step run has room for one)."""
    wanted = {round(steps * k / (previews + 1)) for k in range(1, previews + 1)}
    return tuple(sorted(step for step in wanted if 1 <= step < steps))


def size_like(width: int, height: int, *, area: int) -> tuple[int, int]:
    """(width, height) with the shape of a width x height input and about `area` pixels, in
    multiples of 8 within IMAGE_SIDE: an input image's size, made one the model works at."""
    scale = math.sqrt(area / (width * height))
    step = IMAGE_SIDE.multiple_of or 1

    def side(x: float) -> int:
        return int(min(IMAGE_SIDE.max, max(IMAGE_SIDE.min, round(x * scale / step) * step)))

    return side(width), side(height)


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the caller's, or a fresh random one that gets reported back."""
    return secrets.randbelow(int(SEED.max) + 1) if seed is None else seed


def image_seed(seed: int, index: int) -> int:
    """The seed of a request's index-th image (or clip): consecutive, wrapping within SEED."""
    return (seed + index) % (int(SEED.max) + 1)


@dataclass(frozen=True)
class Number:
    """A numeric field's rule: its limit, and whether it takes integers only."""

    limit: Limit
    integer: bool

    def problem(self, value: Any) -> str | None:
        return self.limit.problem(value, integer=self.integer)


# Blank means only characters for which str.isspace() is true, spelled out so that the same
# regular expression means the same thing here, in JSON Schema validators and in any client.
_SPACE_CLASS = (
    "\\u0009-\\u000d\\u001c-\\u0020\\u0085\\u00a0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000"
)
NOT_BLANK_PATTERN = f"[^{_SPACE_CLASS}]"
NO_NUL_PATTERN = "^[^\\u0000]*$"
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclass(frozen=True)
class Text:
    """A text field's rule: at most `max_chars` characters, no NUL, and not blank unless allowed."""

    max_chars: int
    allow_blank: bool

    def problem(self, value: Any) -> str | None:
        if not isinstance(value, str):
            return f"must be a string, got {type(value).__name__}"
        if not self.allow_blank and not re.search(NOT_BLANK_PATTERN, value):
            return "must not be empty"
        if len(value) > self.max_chars:
            return f"is {len(value)} characters long; the limit is {self.max_chars}"
        if not re.search(NO_NUL_PATTERN, value):
            return "must not contain NUL characters"
        bad = _SURROGATE.search(value)
        if bad:
            # JSON can spell one ("\\ud800"), but it is no character: tokenizers fail on it.
            return f"is not valid Unicode: a lone surrogate {bad.group()!r} at position {bad.start()}"
        return None


Rule = Number | Text


def check_rule(rule: Rule, field: str, value: Any) -> None:
    problem = rule.problem(value)
    if problem:
        raise InvalidInput(problem, field=field)


# Every checked field of each params type and its rule: __post_init__ applies them, and the
# server's OpenAPI document is generated from them. A field whose default is None may be None.
TEXT2IMAGE_RULES: dict[str, Rule] = {
    "prompt": Text(PROMPT_MAX_CHARS, allow_blank=False),
    "negative_prompt": Text(PROMPT_MAX_CHARS, allow_blank=True),
    "num_images_per_prompt": Number(NUM_IMAGES, integer=True),
    "num_inference_steps": Number(STEPS, integer=True),
    "guidance_scale": Number(GUIDANCE_SCALE, integer=False),
    "height": Number(IMAGE_SIDE, integer=True),
    "width": Number(IMAGE_SIDE, integer=True),
    "seed": Number(SEED, integer=True),
    "strength": Number(STRENGTH, integer=False),
}
IMAGE2VIDEO_RULES: dict[str, Rule] = {
    "num_frames": Number(NUM_FRAMES, integer=True),
    "fps": Number(FPS, integer=True),
    "motion_bucket_id": Number(MOTION_BUCKET_ID, integer=True),
    "noise_aug_strength": Number(NOISE_AUG_STRENGTH, integer=False),
    "decode_chunk_size": Number(DECODE_CHUNK_SIZE, integer=True),
    "num_inference_steps": Number(STEPS, integer=True),
    "seed": Number(SEED, integer=True),
    "height": Number(IMAGE_SIDE, integer=True),
    "width": Number(IMAGE_SIDE, integer=True),
}


def _check_rules(params: Any, rules: dict[str, Rule]) -> None:
    optional = {f.name for f in fields(params) if f.default is None}
    for name, rule in rules.items():
        value = getattr(params, name)
        if value is None and name in optional:
            continue
        check_rule(rule, name, value)


def field_defaults(params_type: type) -> dict[str, Any]:
    """Each field's default (None: decided later, by the model or at random)."""
    return {f.name: f.default for f in fields(params_type)}


@dataclass(frozen=True)
class Text2ImageParams:
    """One text-to-image request. Invalid values raise InvalidInput on construction."""

    prompt: str
    negative_prompt: str | None = None
    num_images_per_prompt: int = 1
    num_inference_steps: int = TEXT2IMAGE_DEFAULT_STEPS
    guidance_scale: float = TEXT2IMAGE_DEFAULT_GUIDANCE
    height: int | None = None  # None: the model's native size
    width: int | None = None
    seed: int | None = None  # None: the caller picks a random seed before running
    scheduler: str = TEXT2IMAGE_DEFAULT_SCHEDULER
    # With an input image, how far to move from it (None there: TEXT2IMAGE_DEFAULT_STRENGTH);
    # None without one: plain text-to-image.
    strength: float | None = None

    def __post_init__(self) -> None:
        _check_rules(self, TEXT2IMAGE_RULES)
        if self.scheduler not in SCHEDULERS:
            raise InvalidInput(
                f"unknown scheduler {self.scheduler!r}; choose one of {', '.join(SCHEDULERS)}",
                field="scheduler",
            )

    def batch_key(self) -> tuple[Any, ...]:
        """Requests with equal keys can share one pipeline call (all but prompt and seed)."""
        return tuple(getattr(self, f.name) for f in fields(self) if f.name not in ("prompt", "seed"))


@dataclass(frozen=True)
class Image2VideoParams:
    """One image-to-video request (the image itself travels separately)."""

    num_frames: int | None = None  # None: the model's native frame count
    fps: int = IMAGE2VIDEO_DEFAULT_FPS
    motion_bucket_id: int = IMAGE2VIDEO_DEFAULT_MOTION_BUCKET_ID
    noise_aug_strength: float = IMAGE2VIDEO_DEFAULT_NOISE_AUG_STRENGTH
    decode_chunk_size: int | None = None  # None: decode all frames at once
    num_inference_steps: int = IMAGE2VIDEO_DEFAULT_STEPS
    seed: int | None = None
    height: int | None = None
    width: int | None = None

    def __post_init__(self) -> None:
        _check_rules(self, IMAGE2VIDEO_RULES)


P = TypeVar("P", Text2ImageParams, Image2VideoParams)


def per_output(params: P, count: int) -> list[P]:
    """The parameters of each of a request's `count` images (or clips), each complete on its own.

    Output k gets seed image_seed(seed, k) (and text2image one image), so the parameters written
    beside any single output remake exactly that output.
    """
    if params.seed is None:
        raise ValueError("resolve the seed first")
    seed = params.seed
    one: dict[str, Any] = {"num_images_per_prompt": 1} if isinstance(params, Text2ImageParams) else {}
    return [replace(params, seed=image_seed(seed, k), **one) for k in range(count)]
