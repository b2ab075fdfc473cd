"""GET / (the service's web page, to try it in a browser) and GET /static/{name} (its script, style
sheet and icon): plain files shipped in the package (server/static/), read once, no build step.

The page talks to this service only, through its public API (the jobs API, /health, /openapi.json
for the limits); it asks for the API key when a call answers 401. The page and its files need no key
themselves, and their Content-Security-Policy allows scripts, styles, media and connections from
this origin only.
"""

from __future__ import annotations

import functools
from importlib import resources

from aiohttp import web

from ..errors import NotFound
from .keys import CONFIG

STATIC_PREFIX = "/static/"
PAGES = {"text2image": "text2image.html", "image2video": "image2video.html"}
# The file types in static/ that GET /static/ serves; the pages themselves only at GET /.
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
HTML = "text/html"


@functools.cache
def _files() -> dict[str, bytes]:
    folder = resources.files(__package__).joinpath("static")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir() if entry.is_file()}


def _suffix(name: str) -> str:
    return name[name.rfind(".") :] if "." in name else ""


def static_names() -> list[str]:
    """What GET /static/{name} serves (the route table lists them in /openapi.json)."""
    return sorted(name for name in _files() if _suffix(name) in STATIC_TYPES)


# Only this origin, no inline script or style. The page loads the output files by their path on
# its own origin (their URLs may name --public-url's host), so no other origin is needed.
CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' blob:",  # blob: the chosen image's preview
        "media-src 'self'",
        "connect-src 'self'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
    )
)


def _response(request: web.Request, name: str, content_type: str | None) -> web.Response:
    body = _files().get(name)
    if body is None or content_type is None:
        raise NotFound(f"no such file: {STATIC_PREFIX}{name[:64]}")
    headers = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        # Small files, fetched again each time: a new version of the service is seen at once.
        "Cache-Control": "no-cache",
    }
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=headers)


async def page(request: web.Request) -> web.Response:
    return _response(request, PAGES[request.app[CONFIG].service], HTML)


async def static_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    return _response(request, name, STATIC_TYPES.get(_suffix(name)))
