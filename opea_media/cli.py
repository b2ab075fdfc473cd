"""The `opea-media` command. Imports nothing heavy: `--help` must answer at once."""

from __future__ import annotations

import logging
from typing import Any

import click

from . import __version__
from .commands.animate import animate
from .commands.generate_image import generate_image
from .commands.serve import serve
from .config import ENV_PREFIX
from .errors import EXIT_INTERRUPTED, OpeaMediaError


class CliError(click.ClickException):
    """One clear line on stderr and the exit code that errors.py gives the error type."""

    def __init__(self, error: OpeaMediaError) -> None:
        super().__init__(error.detail)
        self.exit_code = error.exit_code  # type: ignore[misc]


class OpeaMediaGroup(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except OpeaMediaError as exc:
            raise CliError(exc) from None
        except click.UsageError as exc:
            # One line, not click's three-line usage block: the message already names the option.
            hint = f"see '{exc.ctx.command_path} --help'" if exc.ctx else "see --help"
            error = click.ClickException(f"{exc.format_message()} ({hint})")
            error.exit_code = exc.exit_code  # type: ignore[misc]
            raise error from None
        except KeyboardInterrupt as exc:
            # A remote run says what became of its job: "Interrupted: job ... cancelled on the service."
            click.echo(f"Interrupted: {exc}." if str(exc) else "Interrupted.", err=True)
            ctx.exit(EXIT_INTERRUPTED)


@click.group(
    cls=OpeaMediaGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True}
)
@click.version_option(__version__, "-V", "--version", prog_name="opea-media")
@click.option(
    "-v",
    "--verbose",
    count=True,
    envvar=f"{ENV_PREFIX}_VERBOSE",
    help="Log what happens to stderr: -v for info, -vv for debug.",
)
def cli(verbose: int) -> None:
    """Generate images with Stable Diffusion and videos with Stable Video Diffusion,
    offline from the command line or as the OPEA text2image / image2video services."""
    level = {0: logging.CRITICAL, 1: logging.INFO}.get(verbose, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setLevel(level)  # libraries' records reach it too, whatever their loggers' levels
    handler.setFormatter(DetailFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])


class DetailFormatter(logging.Formatter):
    """A log line with the record's details (model, device, dtype, seconds ...) after the message."""

    def format(self, record: logging.LogRecord) -> str:
        from .server.logs import extra_fields

        line = super().format(record)
        details = " ".join(f"{key}={value}" for key, value in extra_fields(record).items())
        return f"{line} ({details})" if details else line


cli.add_command(generate_image)
cli.add_command(animate)
cli.add_command(serve)


def main() -> None:
    cli(prog_name="opea-media")
