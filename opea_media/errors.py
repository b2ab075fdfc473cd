"""Every error type of the CLI and the services, with its HTTP status, CLI exit code and Retry-After.

Each error maps to exactly one HTTP status and one CLI exit code, here and nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

EXIT_OK = 0
EXIT_INVALID_INPUT = 2  # the same code click uses for usage errors
EXIT_MODEL_UNAVAILABLE = 3
EXIT_MODEL_FAILURE = 4
EXIT_INTERRUPTED = 130

# nginx's code for "the client closed the connection first": only ever seen in logs and metrics.
CLIENT_CLOSED = 499

_NO_HEADERS: Mapping[str, str] = MappingProxyType({})


class OpeaMediaError(Exception):
    """Base class: a failure with a message written for a person.

    `retry_after`: seconds after which the same request may succeed (503s); None: retrying will
    not help. `headers`: what an HTTP answer adds besides Retry-After. `closes_connection`: the
    service answers, then closes the connection (what is left of the request will not come).
    """

    http_status = 500
    exit_code = EXIT_MODEL_FAILURE
    headers: Mapping[str, str] = _NO_HEADERS
    closes_connection = False

    def __init__(self, detail: str, *, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.retry_after = retry_after

    def response_headers(self) -> dict[str, str]:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(self.retry_after)
        return headers


class InvalidInput(OpeaMediaError):
    """The caller sent something we cannot use (a bad field, image, path or URL)."""

    http_status = 400
    exit_code = EXIT_INVALID_INPUT

    def __init__(self, detail: str, *, field: str | None = None) -> None:
        super().__init__(f"{field}: {detail}" if field else detail)
        self.field = field


class Unauthorized(OpeaMediaError):
    """401 with the WWW-Authenticate header RFC 6750 asks for."""

    http_status = 401
    exit_code = EXIT_INVALID_INPUT
    headers = MappingProxyType({"WWW-Authenticate": 'Bearer realm="opea-media"'})


class NotFound(OpeaMediaError):
    """What the caller named does not exist (a model id, an output file that expired)."""

    http_status = 404
    exit_code = EXIT_INVALID_INPUT


class ModelUnavailable(OpeaMediaError):
    """The model is loading, failed to load, or cannot be found."""

    http_status = 503
    exit_code = EXIT_MODEL_UNAVAILABLE


class ModelLoading(ModelUnavailable):
    """The model is still loading: worth retrying shortly."""


class ServiceBusy(OpeaMediaError):
    """The queue is full or the service is shutting down; try again later."""

    http_status = 503
    exit_code = EXIT_MODEL_UNAVAILABLE


class QueueFull(ServiceBusy):
    pass


class BodyBudgetFull(ServiceBusy):
    """The request bodies being received now hold all the memory set aside for bodies."""


class BodyTimeout(OpeaMediaError):
    """The request body did not arrive in time: 408, and the connection is closed."""

    http_status = 408
    exit_code = EXIT_INVALID_INPUT
    closes_connection = True


class ShuttingDown(ServiceBusy):
    """The service stopped admitting work; another replica (or this one, restarted) can take it."""

    def __init__(
        self, detail: str = "the service is shutting down; retry shortly", *, retry_after: int = 5
    ) -> None:
        super().__init__(detail, retry_after=retry_after)


class StoreUnavailable(ServiceBusy):
    """The jobs database (PostgreSQL) cannot be reached; its message names host:port, never a password."""

    def __init__(self, detail: str, *, retry_after: int = 5) -> None:
        super().__init__(detail, retry_after=retry_after)


class ModelFailure(OpeaMediaError):
    """Inference itself failed (including running out of memory)."""

    http_status = 500
    exit_code = EXIT_MODEL_FAILURE


class OutOfMemory(ModelFailure):
    def __init__(self) -> None:
        super().__init__("out of memory during inference; try a smaller size, fewer images or frames")


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError, or torch's OutOfMemoryError (named, not imported: torch may not be loaded)."""
    return isinstance(exc, MemoryError) or any(
        cls.__name__ == "OutOfMemoryError" for cls in type(exc).__mro__
    )


class Conflict(OpeaMediaError):
    """What was asked cannot happen in the target's state (cancelling a job that already ended)."""

    http_status = 409
    exit_code = EXIT_INVALID_INPUT


class Unprocessable(OpeaMediaError):
    """Well-formed, but refused as a whole (an Idempotency-Key reused with another body)."""

    http_status = 422
    exit_code = EXIT_INVALID_INPUT


class Interrupted(OpeaMediaError):
    """The running job was stopped on purpose (POST /sdapi/v1/interrupt) before it finished."""

    http_status = 409
    exit_code = EXIT_INTERRUPTED


class DeadlineExceeded(OpeaMediaError):
    http_status = 504
    exit_code = EXIT_MODEL_FAILURE


class Cancelled(OpeaMediaError):
    """A job was interrupted (client gone, deadline passed, Ctrl-C)."""

    http_status = CLIENT_CLOSED
    exit_code = EXIT_INTERRUPTED


class ClientGone(Cancelled):
    """The client disconnected before its answer was ready."""


class ServiceUnreachable(OpeaMediaError):
    """The CLI (`--server URL`) could not reach the service, or lost it mid-job. Only the CLI
    raises it; 502 is what a gateway would answer."""

    http_status = 502
    exit_code = EXIT_MODEL_UNAVAILABLE


# What the CLI raises for a service's error answer (or a failed job's error): the type whose
# status it is, so a remote bad input exits as a local one does. Unlisted statuses: ModelFailure.
_BY_STATUS: Mapping[int, type[OpeaMediaError]] = MappingProxyType(
    {
        400: InvalidInput,
        401: Unauthorized,
        404: NotFound,
        409: Conflict,
        413: InvalidInput,
        415: InvalidInput,
        422: Unprocessable,
        503: ModelUnavailable,
        504: DeadlineExceeded,
    }
)


def error_for_status(status: int, detail: str, *, retry_after: int | None = None) -> OpeaMediaError:
    """The error a service's answer with `status` stands for; a 503 with Retry-After is ServiceBusy."""
    if status == 503 and retry_after is not None:
        return ServiceBusy(detail, retry_after=retry_after)
    return _BY_STATUS.get(status, ModelFailure)(detail)
