"""How an error is written, per API: each route names its style in the route table (routes.py),
and the one error middleware renders every failure of that route in it.

- OPEA (every route of ours): `{"detail", "status_code"}`.
- OpenAI (/v1/images/*, /v1/models): `{"error": {message, type, param, code}}`, which the openai
  SDKs read, with `detail` and `status_code` beside it; `x-should-retry` tells the SDKs whether
  a retry can help (their default is to re-send a 500 twice: minutes of wasted inference).
- AUTOMATIC1111 (/sdapi/v1/*): `{"error", "detail", "body", "errors"}`, as its api_middleware writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from .wire import ErrorBody


@dataclass(frozen=True)
class Failure:
    """One failure, whatever raised it: its status, words, the field at fault and its kind."""

    status: int
    detail: str
    param: str | None = None
    kind: str = "HTTPException"  # the error type's name (AUTOMATIC1111 shows it)


class OpenAIError(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, authentication_error or server_error.")
    param: str | None = Field(description="The request field at fault, when one is.")
    code: str | None


class OpenAIErrorBody(BaseModel):
    """An error of the OpenAI routes: OpenAI's shape, plus this service's own two fields."""

    model_config = ConfigDict(extra="forbid")

    error: OpenAIError
    detail: str
    status_code: int = Field(ge=400, le=599)


class A1111ErrorBody(BaseModel):
    """An error of the /sdapi routes, as AUTOMATIC1111 writes one."""

    model_config = ConfigDict(extra="forbid")

    error: str = Field(description="The error's type.")
    detail: str
    body: str
    errors: str = Field(description='"<status>: <detail>".')


_OPENAI_CODES = {
    400: "invalid_value",
    401: "invalid_api_key",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "interrupted",
    413: "request_too_large",
    415: "unsupported_media_type",
    500: "server_error",
    503: "service_unavailable",
    504: "timeout",
}


def _openai_type(status: int) -> str:
    if status == 401:
        return "authentication_error"
    return "server_error" if status >= 500 else "invalid_request_error"


def _opea(failure: Failure) -> BaseModel:
    return ErrorBody(detail=failure.detail, status_code=failure.status)


def _openai(failure: Failure) -> BaseModel:
    error = OpenAIError(
        message=failure.detail,
        type=_openai_type(failure.status),
        param=failure.param,
        code=_OPENAI_CODES.get(failure.status),
    )
    return OpenAIErrorBody(error=error, detail=failure.detail, status_code=failure.status)


def _a1111(failure: Failure) -> BaseModel:
    return A1111ErrorBody(
        error=failure.kind, detail=failure.detail, body="", errors=f"{failure.status}: {failure.detail}"
    )


def _no_headers(status: int, headers: Mapping[str, str]) -> dict[str, str]:
    return {}


def _openai_retry(status: int, headers: Mapping[str, str]) -> dict[str, str]:
    # A Retry-After (loading, queue full, draining) says a retry can succeed; nothing else can.
    retry = any(name.lower() == "retry-after" for name in headers)
    return {"x-should-retry": "true" if retry else "false"}


@dataclass(frozen=True)
class ErrorStyle:
    name: str
    body: type[BaseModel]  # for the OpenAPI document
    build: Callable[[Failure], BaseModel]
    more_headers: Callable[[int, Mapping[str, str]], dict[str, str]] = _no_headers

    def response(self, failure: Failure, *, headers: Mapping[str, str] | None = None) -> web.Response:
        all_headers = {**(headers or {})}
        all_headers.update(self.more_headers(failure.status, all_headers))
        return web.Response(
            text=self.build(failure).model_dump_json(),
            status=failure.status,
            content_type="application/json",
            headers=all_headers,
        )


OPEA = ErrorStyle("opea", ErrorBody, _opea)
OPENAI = ErrorStyle("openai", OpenAIErrorBody, _openai, _openai_retry)
A1111 = ErrorStyle("a1111", A1111ErrorBody, _a1111)
