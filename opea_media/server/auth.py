"""Bearer-token authentication for the /v1 API; health and metrics stay open for probes and scrapers."""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from ..errors import Unauthorized

PROTECTED_PREFIX = "/v1/"


def bearer_auth_middleware(api_key: str) -> Middleware:
    """Require `Authorization: Bearer <api_key>` on every /v1 path, known or not."""
    expected = _digest(api_key)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(PROTECTED_PREFIX) or request.path == PROTECTED_PREFIX.rstrip("/"):
            scheme, _, token = request.headers.get("Authorization", "").partition(" ")
            # Digests of equal length, compared in constant time: the time taken tells neither how
            # much of a guessed key was right nor how long the real key is.
            if scheme.lower() != "bearer" or not hmac.compare_digest(_digest(token.strip()), expected):
                raise _Unauthorized("a valid API key is required: send 'Authorization: Bearer <key>'")
        return await handler(request)

    return middleware


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class _Unauthorized(Unauthorized):
    """401 with the WWW-Authenticate header RFC 6750 asks for."""

    headers = {"WWW-Authenticate": 'Bearer realm="opea-media"'}
