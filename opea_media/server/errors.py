"""Server-only error types (those that carry a Retry-After) and the spec's JSON error body."""

from __future__ import annotations

from aiohttp import web

from ..errors import Cancelled, ModelUnavailable, ServiceBusy

# nginx's code for "the client closed the connection first": only ever seen in logs and metrics.
CLIENT_CLOSED = 499


class ModelLoading(ModelUnavailable):
    """The model is still loading: worth retrying shortly."""

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class QueueFull(ServiceBusy):
    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ShuttingDown(ServiceBusy):
    """The service stopped admitting work; another replica (or this one, restarted) can take it."""

    def __init__(
        self, detail: str = "the service is shutting down; retry shortly", *, retry_after: int = 5
    ) -> None:
        super().__init__(detail)
        self.retry_after = retry_after


class ClientGone(Cancelled):
    """The client disconnected before its answer was ready."""


def error_response(status: int, detail: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """The spec's error body, `{"detail": ..., "status_code": N}`, with the same status."""
    return web.json_response({"detail": detail, "status_code": status}, status=status, headers=headers)
