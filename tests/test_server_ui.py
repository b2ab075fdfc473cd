"""GET / and GET /static/{name}: each service's page and its files, in-process (the page itself is
driven in a real browser by tests/integration/test_ui.py)."""

from __future__ import annotations

import re
from importlib import resources
from typing import Any

import pytest

from opea_media.server import ui
from opea_media.server.routes import routes_for


async def test_each_service_serves_its_own_page(
    server_client: Any, server_tiny_t2i: Any, server_tiny_i2v: Any
) -> None:
    for service, handle in (("text2image", server_tiny_t2i), ("image2video", server_tiny_i2v)):
        client = await server_client(handle, service=service)
        response = await client.get("/")
        assert response.status == 200
        assert response.content_type == "text/html"
        page = await response.text()
        assert f'<script type="module" src="static/{service}.js"></script>' in page
        assert "<title>opea-media " + service in page
        policy = response.headers["Content-Security-Policy"]
        assert "script-src 'self'" in policy and "default-src 'none'" in policy
        assert "'unsafe-inline'" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"


async def test_the_page_and_its_files_need_no_key(server_client: Any, server_tiny_t2i: Any) -> None:
    client = await server_client(server_tiny_t2i, service="text2image", api_key="s3cret")
    for path in ("/", "/static/common.js", "/static/text2image.js", "/static/style.css", "/static/icon.svg"):
        response = await client.get(path)
        assert response.status == 200, path
    assert (await client.get("/v1/jobs")).status == 401  # the API behind it still asks


async def test_static_files_have_their_types_and_nothing_else_is_served(
    server_client: Any, server_tiny_t2i: Any
) -> None:
    client = await server_client(server_tiny_t2i, service="text2image")
    for name, content_type in (
        ("common.js", "text/javascript"),
        ("style.css", "text/css"),
        ("icon.svg", "image/svg+xml"),
    ):
        response = await client.get(f"/static/{name}")
        assert (response.status, response.content_type) == (200, content_type)
    # The pages only at /; no file outside the folder, no unknown file.
    for path in (
        "/static/text2image.html",
        "/static/nothing.js",
        "/static/..%2fui.py",
        "/static/%2e%2e/ui.py",
    ):
        response = await client.get(path)
        assert response.status == 404, path
        assert (await response.json())["status_code"] == 404


@pytest.mark.parametrize("service", ["text2image", "image2video"])
def test_the_routes_are_in_the_table_without_the_key(service: str) -> None:
    routes = {route.path: route for route in routes_for(service)}  # type: ignore[arg-type]
    for path in ("/", "/static/{name}"):
        assert not routes[path].protected


def test_every_file_the_pages_name_is_shipped() -> None:
    """Each script, style sheet and icon a page or module refers to is in static/ with a served type."""
    folder = resources.files("opea_media.server").joinpath("static")
    names = {entry.name for entry in folder.iterdir()}
    for page in ui.PAGES.values():
        text = folder.joinpath(page).read_text()
        for name in re.findall(r'(?:src|href)="static/([^"]+)"', text):
            assert name in names and ui.STATIC_TYPES.get("." + name.rsplit(".", 1)[-1]), name
    for script in (n for n in names if n.endswith(".js")):
        for name in re.findall(r'from "\./([^"]+)"', folder.joinpath(script).read_text()):
            assert name in names, (script, name)
