"""What every command shares: options that read OPEA_MEDIA_* variables, typed from params.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from ..config import envvar
from ..errors import InvalidInput
from ..params import IMAGE_SIDE, SEED, STEPS, Limit

F = TypeVar("F", bound=Callable[..., Any])


class EnvCommand(click.Command):
    """A command whose every option also reads OPEA_MEDIA_<NAME> (--max-queue: OPEA_MEDIA_MAX_QUEUE).

    What click's auto_envvar_prefix does, with two differences: the variables of every command
    share one prefix (OPEA_MEDIA_STEPS, not OPEA_MEDIA_GENERATE_IMAGE_STEPS), and each is an
    explicit envvar, so --help shows it and a bad value's error names it just as a bad flag's does.
    An option that names its own variable (generate-image --model) keeps it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if isinstance(param, click.Option) and param.name:
                param.envvar = param.envvar or envvar(param.name)
                param.show_envvar = True


def given(ctx: click.Context, name: str) -> bool:
    """Whether the person typed this option (or argument): not its default, nor an OPEA_MEDIA_* variable."""
    source = ctx.get_parameter_source(name)
    return source not in (None, ParameterSource.DEFAULT, ParameterSource.ENVIRONMENT)


class LimitType(click.ParamType):
    """A number checked against a params.Limit, so the CLI and the server refuse the same values.

    With `auto=True` the word "auto" is also accepted and stands for None (the device's default).
    """

    def __init__(self, limit: Limit, *, integer: bool = True, auto: bool = False) -> None:
        self.limit = limit
        self.integer = integer
        self.auto = auto
        self.name = "integer" if integer else "float"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if self.auto and (value is None or (isinstance(value, str) and value.strip().lower() == "auto")):
            return None
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number: int | float = value
        else:
            try:
                number = int(value) if self.integer else float(value)
            except (TypeError, ValueError):
                expected = f"'auto' or an {self.name}" if self.auto else f"a valid {self.name}"
                self.fail(f"{value!r} is not {expected}", param, ctx)
        try:
            self.limit.check("value", number, integer=self.integer)
        except InvalidInput as exc:
            self.fail(exc.detail.removeprefix("value: "), param, ctx)
        return number

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        span = (
            f"{int(self.limit.min)}..{int(self.limit.max)}"
            if self.integer
            else f"{self.limit.min}..{self.limit.max}"
        )
        return f"auto|{span}" if self.auto else span


def apply(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    def wrap(f: F) -> F:
        for decorator in reversed(decorators):
            f = decorator(f)
        return f

    return wrap


def generation_options(default_steps: int) -> Callable[[F], F]:
    """--steps / --seed / --height / --width / --quiet."""
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
