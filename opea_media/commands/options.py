"""Options shared by the commands, typed from the one set of limits in params.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..config import DEFAULT_MODELS, DEVICES, DTYPES, ENV_PREFIX, Task
from ..errors import InvalidInput
from ..params import IMAGE_SIDE, SEED, STEPS, Limit

if TYPE_CHECKING:
    from ..models import ModelRegistry

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
class ModelChoice:
    """--model / --device / --dtype as given; nothing heavy is imported until registry()."""

    ref: str
    device: str = "auto"
    dtype: str = "auto"

    def registry(self) -> ModelRegistry:
        from ..models import ModelRegistry

        return ModelRegistry(device=self.device, dtype=self.dtype)


def env(name: str) -> str:
    return f"{ENV_PREFIX}_{name}"


def apply(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return wrap


def model_options(task: Task) -> Callable[[F], F]:
    """--model / --device / --dtype, as every command that loads a model takes them."""
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
            help="Weights precision: auto is float16 on CUDA, float32 on the CPU.",
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
