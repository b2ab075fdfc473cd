"""Generation parameters and their limits: defined once, used by the CLI, the server and its schema."""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass, fields
from typing import Any

from .errors import InvalidInput


@dataclass(frozen=True)
class Limit:
    """An inclusive numeric range, optionally restricted to multiples of `multiple_of`."""

    min: float
    max: float
    multiple_of: int | None = None

    def check(self, field: str, value: Any, *, integer: bool) -> None:
        # bool is an int subclass: `true` is not a step count.
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)):
            kind = "an integer" if integer else "a number"
            raise InvalidInput(f"must be {kind}, got {value!r}", field=field)
        if not integer and not math.isfinite(value):
            raise InvalidInput(f"must be a finite number, got {value!r}", field=field)
        if not self.min <= value <= self.max:
            raise InvalidInput(
                f"must be between {_fmt(self.min)} and {_fmt(self.max)}, got {value!r}", field=field
            )
        if self.multiple_of and value % self.multiple_of:
            raise InvalidInput(f"must be a multiple of {self.multiple_of}, got {value!r}", field=field)


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)


# One source of truth for every request limit.
STEPS = Limit(1, 150)
NUM_IMAGES = Limit(1, 8)
IMAGE_SIDE = Limit(64, 2048, multiple_of=8)  # diffusers needs multiples of 8
GUIDANCE_SCALE = Limit(0.0, 50.0)
SEED = Limit(0, 2**32 - 1)
PROMPT_MAX_CHARS = 10_000
NUM_FRAMES = Limit(1, 128)
FPS = Limit(1, 60)
MOTION_BUCKET_ID = Limit(0, 1023)
NOISE_AUG_STRENGTH = Limit(0.0, 1.0)
DECODE_CHUNK_SIZE = Limit(1, 128)

SCHEDULERS = ("default", "ddim", "euler", "euler-a", "dpm++", "pndm")

TEXT2IMAGE_DEFAULT_STEPS = 25
TEXT2IMAGE_DEFAULT_GUIDANCE = 7.5
TEXT2IMAGE_DEFAULT_SCHEDULER = "dpm++"
IMAGE2VIDEO_DEFAULT_STEPS = 25
IMAGE2VIDEO_DEFAULT_FPS = 7
IMAGE2VIDEO_DEFAULT_MOTION_BUCKET_ID = 127
IMAGE2VIDEO_DEFAULT_NOISE_AUG_STRENGTH = 0.02


def resolve_seed(seed: int | None) -> int:
    """The seed to use: the caller's, or a fresh random one that gets reported back."""
    return secrets.randbelow(int(SEED.max) + 1) if seed is None else seed


def image_seed(seed: int, index: int) -> int:
    """The seed of a request's index-th image (or clip): consecutive, wrapping within SEED."""
    return (seed + index) % (int(SEED.max) + 1)


def check_text(field: str, value: Any, *, allow_empty: bool) -> None:
    if not isinstance(value, str):
        raise InvalidInput(f"must be a string, got {type(value).__name__}", field=field)
    if not allow_empty and not value.strip():
        raise InvalidInput("must not be empty", field=field)
    if len(value) > PROMPT_MAX_CHARS:
        raise InvalidInput(f"is {len(value)} characters long; the limit is {PROMPT_MAX_CHARS}", field=field)
    if "\x00" in value:
        raise InvalidInput("must not contain NUL characters", field=field)


def _check_optional(field: str, value: Any, limit: Limit, *, integer: bool) -> None:
    if value is not None:
        limit.check(field, value, integer=integer)


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

    def __post_init__(self) -> None:
        check_text("prompt", self.prompt, allow_empty=False)
        if self.negative_prompt is not None:
            check_text("negative_prompt", self.negative_prompt, allow_empty=True)
        NUM_IMAGES.check("num_images_per_prompt", self.num_images_per_prompt, integer=True)
        STEPS.check("num_inference_steps", self.num_inference_steps, integer=True)
        GUIDANCE_SCALE.check("guidance_scale", self.guidance_scale, integer=False)
        _check_optional("height", self.height, IMAGE_SIDE, integer=True)
        _check_optional("width", self.width, IMAGE_SIDE, integer=True)
        _check_optional("seed", self.seed, SEED, integer=True)
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
        _check_optional("num_frames", self.num_frames, NUM_FRAMES, integer=True)
        FPS.check("fps", self.fps, integer=True)
        MOTION_BUCKET_ID.check("motion_bucket_id", self.motion_bucket_id, integer=True)
        NOISE_AUG_STRENGTH.check("noise_aug_strength", self.noise_aug_strength, integer=False)
        _check_optional("decode_chunk_size", self.decode_chunk_size, DECODE_CHUNK_SIZE, integer=True)
        STEPS.check("num_inference_steps", self.num_inference_steps, integer=True)
        _check_optional("seed", self.seed, SEED, integer=True)
        _check_optional("height", self.height, IMAGE_SIDE, integer=True)
        _check_optional("width", self.width, IMAGE_SIDE, integer=True)
