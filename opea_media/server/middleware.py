"""Around every request: its id and access log, the one error middleware, the API key."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
import uuid

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import CLIENT_CLOSED, Cancelled, OpeaMediaError, Unauthorized
from .config import MIB
from .keys import CONFIG, METRICS
from .logs import request_id_var
from .wire import ErrorBody

log = logging.getLogger(__name__)
access_log = logging.getLogger("opea_media.access")

REQUEST_ID_HEADER = "X-Request-ID"
# A caller's own id is kept (to follow a request across services) only if it is harmless in logs.
_GOOD_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes every few seconds would drown the access log at info.
_QUIET_PATHS = frozenset({"/health", "/health/live", "/health/ready", "/metrics"})


def error_response(status: int, detail: str, *, headers: dict[str, str] | None = None) -> web.Response:
    """The spec's error body, `{"detail": ..., "status_code": N}`, with the same status."""
    body = ErrorBody(detail=detail, status_code=status).model_dump_json()
    return web.Response(text=body, status=status, content_type="application/json", headers=headers)


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
    """Every failure, aiohttp's 404/405/413 included, leaves as the spec's JSON error body."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:  # redirects and the like are answers, not failures
            raise
        keep = ("allow", "www-authenticate", "retry-after")
        headers = {k: v for k, v in exc.headers.items() if k.lower() in keep}
        return error_response(exc.status, _http_exception_detail(exc, request), headers=headers)
    except Cancelled as exc:
        # Nobody is listening any more; the status is for the access log and the metrics.
        log.info("request cancelled: %s", exc.detail)
        return web.Response(status=CLIENT_CLOSED)
    except OpeaMediaError as exc:
        headers = exc.response_headers()
        if exc.http_status >= 500:
            # 503s (loading, busy) are routine; a failed or late inference is worth a warning.
            level = logging.INFO if exc.http_status == 503 else logging.WARNING
            log.log(level, "request failed: %s", exc.detail, extra={"status": exc.http_status})
        return error_response(exc.http_status, exc.detail, headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        # A bug of ours or a library surprise: the full story goes to the log, never to the client.
        log.exception("unhandled error")
        return error_response(
            500, "internal error; the service log has the details under this request's X-Request-ID"
        )


# --- the API key ------------------------------------------------------------------------------------

PROTECTED_PREFIX = "/v1/"  # health, metrics and the OpenAPI document stay open for probes and scrapers


def protected(path: str) -> bool:
    return path.startswith(PROTECTED_PREFIX) or path == PROTECTED_PREFIX.rstrip("/")


def bearer_auth_middleware(api_key: str) -> Middleware:
    """Require `Authorization: Bearer <api_key>` on every /v1 path, known or not."""
    expected = _digest(api_key)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if protected(request.path):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            # Digests of equal length, compared in constant time: the time taken tells neither how
            # much of a guessed key was right nor how long the real key is.
            if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(token.strip()), expected):
                raise Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")
        return await handler(request)

    return middleware


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()
