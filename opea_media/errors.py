"""Error types shared by the CLI and the server.

Each error maps to exactly one HTTP status and one CLI exit code, here and nowhere else.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_INVALID_INPUT = 2  # the same code click uses for usage errors
EXIT_MODEL_UNAVAILABLE = 3
EXIT_MODEL_FAILURE = 4
EXIT_INTERRUPTED = 130


class OpeaMediaError(Exception):
    """Base class: a failure with a message written for a person."""

    http_status = 500
    exit_code = EXIT_MODEL_FAILURE

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class InvalidInput(OpeaMediaError):
    """The caller sent something we cannot use (a bad field, image, path or URL)."""

    http_status = 400
    exit_code = EXIT_INVALID_INPUT

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field


class Unauthorized(OpeaMediaError):
    http_status = 401
    exit_code = EXIT_INVALID_INPUT


class PayloadTooLarge(OpeaMediaError):
    http_status = 413
    exit_code = EXIT_INVALID_INPUT


class ModelUnavailable(OpeaMediaError):
    """The model is loading, failed to load, or cannot be found."""

    http_status = 503
    exit_code = EXIT_MODEL_UNAVAILABLE


class ServiceBusy(OpeaMediaError):
    """The queue is full or the service is shutting down; try again later."""

    http_status = 503
    exit_code = EXIT_MODEL_UNAVAILABLE


class ModelFailure(OpeaMediaError):
    """Inference itself failed (including running out of memory)."""

    http_status = 500
    exit_code = EXIT_MODEL_FAILURE


class DeadlineExceeded(OpeaMediaError):
    http_status = 504
    exit_code = EXIT_MODEL_FAILURE


class Cancelled(OpeaMediaError):
    """A job was interrupted (client gone, deadline passed, Ctrl-C)."""

    http_status = 499
    exit_code = EXIT_INTERRUPTED
