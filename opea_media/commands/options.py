"""Options shared by the commands, typed from the one set of limits in params.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..config import DEFAULT_MODELS, DEVICES, DTYPES, ENV_PREFIX, Task
from ..errors import InvalidInput
from ..params import IMAGE_SIDE, SEED, STEPS, TUNING_COUNT, Limit

if TYPE_CHECKING:
    from ..models import ModelRegistry
    from ..models.tuning import Tuning

# The choices of models/tuning.py, repeated here so that --help does not import torch.
SWITCH = ("auto", "on", "off")
ATTENTION_SLICING = ("auto", "off", "on", "max")

F = TypeVar("F", bound=Callable[..., Any])


class LimitType(click.ParamType):
    """A number checked against a params.Limit, so the CLI and the server refuse the same values."""

    def __init__(self, limit: Limit, *, integer: bool = True) -> None:
        self.limit = limit
        self.integer = integer
        self.name = "integer" if integer else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number: int | float = value
        else:
            try:
                number = int(value) if self.integer else float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a valid {self.name}", param, ctx)
        try:
            self.limit.check("value", number, integer=self.integer)
        except InvalidInput as exc:
            self.fail(exc.detail.removeprefix("value: "), param, ctx)
        return number

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        if self.integer:
            return f"{int(self.limit.min)}..{int(self.limit.max)}"
        return f"{self.limit.min}..{self.limit.max}"


@dataclass(frozen=True)
class TuningChoice:
    """The memory/speed flags as given ("auto": the device's default, see models/tuning.py)."""

    guidance_split: str = "auto"
    attention_slicing: str = "auto"
    vae_slicing: str = "auto"
    vae_tiling: str = "auto"
    forward_chunking: str = "auto"
    channels_last: str = "auto"
    images_per_call: int | None = None
    threads: int | None = None

    def tuning(self) -> Tuning:
        from ..models.tuning import Tuning

        return Tuning(**vars(self))


@dataclass(frozen=True)
class ModelChoice:
    """--model / --device / --dtype and the tuning flags; nothing heavy is imported until registry()."""

    ref: str
    device: str = "auto"
    dtype: str = "auto"
    tuning: TuningChoice = TuningChoice()

    def registry(self) -> ModelRegistry:
        from ..models import ModelRegistry

        return ModelRegistry(device=self.device, dtype=self.dtype, tuning=self.tuning.tuning())


def env(name: str) -> str:
    return f"{ENV_PREFIX}_{name}"


def apply(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return wrap


def model_options(task: Task) -> Callable[[F], F]:
    """--model / --device / --dtype and the memory/speed flags of `task`.

    The command receives them as `model`, `device`, `dtype` and one keyword per tuning flag;
    `model_choice(**those)` gathers them.
    """
    return apply(
        click.option(
            "--model",
            default=DEFAULT_MODELS[task],
            envvar=env(f"{task.upper()}_MODEL"),
            show_envvar=True,
            help="A Hugging Face Hub id, a local folder holding a diffusers pipeline, "
            "or 'tiny' (a small built-in random-weight model for offline smoke runs).",
        ),
        click.option(
            "--device",
            type=click.Choice(DEVICES),
            default="auto",
            envvar=env("DEVICE"),
            show_envvar=True,
            help="Where to run: auto picks CUDA when a GPU is present, else the CPU.",
        ),
        click.option(
            "--dtype",
            type=click.Choice(DTYPES),
            default="auto",
            envvar=env("DTYPE"),
            show_envvar=True,
            help="Weights precision. auto: float16 on CUDA; on a CPU bfloat16 where it has native bf16 "
            "(AVX512-BF16/AMX: half the memory, several times faster), else float32 (image2video: bfloat16, "
            "which alone fits in 8 GB).",
        ),
        *tuning_options(task),
    )


def _switch(name: str, variable: str, help: str) -> Callable[[F], F]:
    return click.option(
        name, type=click.Choice(SWITCH), default="auto", envvar=env(variable), show_envvar=True, help=help
    )


def _count(name: str, variable: str, help: str) -> Callable[[F], F]:
    return click.option(
        name, type=LimitType(TUNING_COUNT), default=None, envvar=env(variable), show_envvar=True, help=help
    )


def tuning_options(task: Task) -> list[Callable[[F], F]]:
    """The memory/speed levers that matter for `task`; defaults in docs/performance.md."""
    common = [
        _switch(
            "--guidance-split",
            "GUIDANCE_SPLIT",
            "Run the UNet on the unconditional and conditional halves of classifier-free guidance one "
            "after the other: half the activation memory, the same arithmetic. auto: on for image2video on "
            "the CPU (which otherwise needs over 8 GB), else off.",
        ),
        _switch(
            "--channels-last",
            "CHANNELS_LAST",
            "Convolution memory layout NHWC. auto: on, except image2video on the CPU.",
        ),
        _count(
            "--threads",
            "THREADS",
            "CPU threads for inference. Default: PyTorch's choice, capped at the container's CPU quota.",
        ),
    ]
    if task == "image2video":
        return [
            _switch(
                "--forward-chunking",
                "FORWARD_CHUNKING",
                "Run the UNet's feed-forward layers one frame at a time: a lower peak, the same speed. "
                "auto: on.",
            ),
            *common,
        ]
    return [
        click.option(
            "--attention-slicing",
            type=click.Choice(ATTENTION_SLICING),
            default="auto",
            envvar=env("ATTENTION_SLICING"),
            show_envvar=True,
            help="Compute attention a few heads at a time (max: one). auto: off, PyTorch's SDPA is "
            "already memory-efficient.",
        ),
        _switch(
            "--vae-slicing",
            "VAE_SLICING",
            "Decode several images one at a time: the same pixels, a lower peak. auto: on.",
        ),
        _switch(
            "--vae-tiling",
            "VAE_TILING",
            "Decode images larger than the model's native size in tiles: bounded memory, faint seams "
            "possible. auto: on.",
        ),
        _count(
            "--images-per-call",
            "IMAGES_PER_CALL",
            "Most images denoised in one pipeline call; more run in several calls, with the same "
            "pixels. Default: 2 on the CPU (bounds the peak memory), 8 with CUDA.",
        ),
        *common,
    ]


def model_choice(
    model: str,
    device: str,
    dtype: str,
    *,
    guidance_split: str = "auto",
    attention_slicing: str = "auto",
    vae_slicing: str = "auto",
    vae_tiling: str = "auto",
    forward_chunking: str = "auto",
    channels_last: str = "auto",
    images_per_call: int | None = None,
    threads: int | None = None,
) -> ModelChoice:
    return ModelChoice(
        model,
        device,
        dtype,
        TuningChoice(
            guidance_split=guidance_split,
            attention_slicing=attention_slicing,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
            forward_chunking=forward_chunking,
            channels_last=channels_last,
            images_per_call=images_per_call,
            threads=threads,
        ),
    )


def generation_options(default_steps: int) -> Callable[[F], F]:
    """--steps / --seed / --height / --width."""
    return apply(
        click.option("--steps", type=LimitType(STEPS), default=default_steps, help="Denoising steps."),
        click.option(
            "--seed",
            type=LimitType(SEED),
            default=None,
            help="Random seed; by default a random one, which is reported so the run can be repeated.",
        ),
        click.option(
            "--height",
            type=LimitType(IMAGE_SIDE),
            default=None,
            help="Output height in pixels (a multiple of 8); default: the model's native size.",
        ),
        click.option(
            "--width",
            type=LimitType(IMAGE_SIDE),
            default=None,
            help="Output width in pixels (a multiple of 8); default: the model's native size.",
        ),
        click.option("-q", "--quiet", is_flag=True, help="Print nothing but errors; no progress bar."),
    )
