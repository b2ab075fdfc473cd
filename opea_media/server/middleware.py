"""Around every request: its id and access log, CORS, the one error middleware, the API key."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import CLIENT_CLOSED, Cancelled, OpeaMediaError, Unauthorized
from .config import MIB
from .error_styles import OPEA, ErrorStyle, Failure
from .keys import CONFIG, METRICS, ROUTE_OF
from .logs import request_id_var
from .routes import Route, protected_path

log = logging.getLogger(__name__)
access_log = logging.getLogger("opea_media.access")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own id is kept (to follow a request across services) only if it is harmless in logs.
_GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes every few seconds would drown the access log at info.
_QUIET_PATHS = frozenset(
    {"/health", "/health/live", "/health/ready", "/metrics", "/v1/health_check", "/sdapi/v1/progress"}
)


def route_of(request: web.Request) -> Route | None:
    """The route table's entry for the matched route; None for unknown paths and methods."""
    return request.app[ROUTE_OF].get(request.match_info.route)


def error_style(request: web.Request) -> ErrorStyle:
    route = route_of(request)
    return route.error_style if route is not None else OPEA


def _endpoint(request: web.Request) -> str:
    """The route's pattern, never the raw path: random 404 paths must not mint metric series."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


@web.middleware
async def access_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give the request an id (also returned in X-Request-ID), then log and count it."""
    incoming = request.headers.get(REQUEST_ID_HEADER, "")
    request_id = incoming if _GOOD_REQUEST_ID.fullmatch(incoming) else uuid.uuid4().hex
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers[REQUEST_ID_HEADER] = request_id
        return response
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    finally:
        seconds = time.perf_counter() - started
        endpoint = _endpoint(request)
        metrics = request.app[METRICS]
        metrics.requests.labels(endpoint, request.method, str(status)).inc()
        metrics.request_seconds.labels(endpoint).observe(seconds)
        level = logging.DEBUG if request.path in _QUIET_PATHS and status < 500 else logging.INFO
        access_log.log(
            level,
            "%s %s %d",
            request.method,
            request.path,
            status,
            extra={
                "method": request.method,
                "path": request.path,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
                "remote": request.remote,
            },
        )
        request_id_var.reset(token)


def _http_exception_detail(exc: web.HTTPException, request: web.Request) -> str:
    """aiohttp's own errors in words (its texts give sizes in bytes or are bare reason phrases)."""
    if isinstance(exc, web.HTTPNotFound):
        return f"no such endpoint: {request.path}"
    if isinstance(exc, web.HTTPMethodNotAllowed):
        return (
            f"{request.method} is not allowed on {request.path}; use {', '.join(sorted(exc.allowed_methods))}"
        )
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        limit = request.app[CONFIG].max_body_bytes
        return f"the request body is larger than the {limit / MIB:g} MiB limit"
    text = exc.text or ""
    # Our own raises carry a sentence; aiohttp's carry "415: Unsupported Media Type"-style text.
    return text if text and not text.startswith(f"{exc.status}:") else exc.reason


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure, aiohttp's 404/405/413 included, leaves as a JSON error body in its route's style."""
    style = error_style(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not failures
            raise
        keep = ("allow", "www-authenticate", "retry-after")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in keep}
        return style.response(Failure(exc.status, _http_exception_detail(exc, request)), headers=headers)
    except Cancelled as exc:
        # Nobody is listening any more; the status is for the access log and the metrics.
        log.info("request cancelled: %s", exc.detail)
        return web.Response(status=CLIENT_CLOSED)
    except OpeaMediaError as exc:
        if exc.http_status >= 500:
            # 503s (loading, busy) are routine; a failed or late inference is worth a warning.
            level = logging.INFO if exc.http_status == 503 else logging.WARNING
            log.log(level, "request failed: %s", exc.detail, extra={"status": exc.http_status})
        failure = Failure(exc.http_status, exc.detail, getattr(exc, "field", None), type(exc).__name__)
        response = style.response(failure, headers=exc.response_headers())
        return await _answer_and_close(request, response) if exc.closes_connection else response
    except asyncio.CancelledError:
        raise
    except Exception:
        # A bug of ours or a library surprise: the full story goes to the log, never to the client.
        log.exception("unhandled error")
        detail = "internal error; the service log has the details under this request's X-Request-ID"
        return style.response(Failure(500, detail, kind="InternalError"))


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send the answer now, then close the connection: the rest of the request is not coming, and
    bodies.drain_middleware would otherwise wait for it before closing."""
    response.force_close()
    response.headers[REQUEST_ID_HEADER] = request_id_var.get() or ""
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()  # the answer is in the transport's buffer: flushed, then closed
    return response


# --- the API key ------------------------------------------------------------------------------------


def requires_key(request: web.Request) -> bool:
    """A route says whether it needs the key; an unknown path does under the APIs' prefixes."""
    route = route_of(request)
    return route.protected if route is not None else protected_path(request.path)


def api_key_middleware(api_key: str) -> Middleware:
    """Require the key on every protected path, known or not: `Authorization: Bearer <key>`, or
    Basic auth with the key as the password (any user name), which AUTOMATIC1111 clients send."""
    expected = _digest(api_key)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if requires_key(request):
            presented = presented_key(request.headers.get("Authorization", ""))
            # Digests of equal length, compared in constant time: the time taken tells neither how
            # much of a guessed key was right nor how long the real key is.
            if not hmac.compare_digest(_digest(presented or ""), expected) or presented is None:
                raise Unauthorized(
                    "a valid API key is required: send 'Authorization: Bearer <key>' "
                    "(or Basic authentication with the key as the password)"
                )
        return await handler(request)

    return middleware


def presented_key(header: str) -> str | None:
    """The key an Authorization header carries: a Bearer token or a Basic password; None if neither."""
    scheme, _, credentials = header.strip().partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            return None
        _user, colon, password = decoded.partition(":")
        return password if colon else None
    return None


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


# --- CORS -------------------------------------------------------------------------------------------

CORS_MAX_AGE = "600"  # seconds a browser may cache a preflight's answer


def cors_middleware(origins: tuple[str, ...]) -> Middleware:
    """Answer browsers' preflights from the allowed origins (before the API key: they carry none)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        preflight = request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers
        if preflight and _allowed_origin(request, origins):
            headers = {
                "Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                "Access-Control-Max-Age": CORS_MAX_AGE,
            }
            asked = request.headers.get("Access-Control-Request-Headers")
            if asked:
                headers["Access-Control-Allow-Headers"] = asked
            return web.Response(status=204, headers=headers)
        return await handler(request)

    return middleware


def cors_headers(origins: tuple[str, ...]) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An on_response_prepare hook: every answer (a stream's too) to an allowed origin says so."""

    async def add(request: web.Request, response: web.StreamResponse) -> None:
        origin = _allowed_origin(request, origins)
        if origin:
            response.headers["Access-Control-Allow-Origin"] = origin
            response.headers["Access-Control-Expose-Headers"] = "X-Request-ID, Retry-After"
            if origin != "*":
                response.headers.add("Vary", "Origin")

    return add


def _allowed_origin(request: web.Request, origins: tuple[str, ...]) -> str | None:
    origin = request.headers.get("Origin")
    if origin is None:
        return None
    if "*" in origins:
        return "*"
    return origin if origin in origins else None
