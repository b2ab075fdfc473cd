"""SSRF through the HTTP API: image URLs that try to reach this machine or its network.

Every case goes through POST /v1/image2video of a service with the default policy (public
addresses only) and asserts the 400 and its body. A guard answers name lookups from a small table
and fails the test on any connection to an address that is not loopback; refusals are asserted to
happen before any connection at all. The fetch layer's own tests (tests/test_fetch.py) cover the
same rules without HTTP; tests/test_server_api.py covers the first eight spellings through HTTP.
"""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from server_support import NetworkGuard, assert_error, guard_network, png_bytes

FAKE_DNS = {
    "metadata.google.internal": ["169.254.169.254"],
    "internal.test": ["10.0.0.5"],
    "v6-internal.test": ["fd12:3456::1"],
    "mapped.test": ["::ffff:192.168.0.1"],
    "mixed.test": ["93.184.215.14", "127.0.0.1"],  # one public answer is not enough
}
NOT_PUBLIC = "only public addresses may be fetched"


@pytest.fixture
def guard(monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
    return guard_network(monkeypatch, FAKE_DNS)


@pytest.fixture
async def i2v(server_client: Any, server_tiny_i2v: Any) -> TestClient:
    return await server_client(server_tiny_i2v, service="image2video")


def _request(url: str) -> dict[str, Any]:
    return {"images_path": [{"image_path": url}], "num_frames": 2, "num_inference_steps": 2}


def _app_port(client: TestClient) -> int:
    assert client.port is not None
    return client.port


async def _refused(client: TestClient, guard: NetworkGuard, url: str, fragment: str) -> str:
    before = len(guard.connects)
    body = await assert_error(await client.post("/v1/image2video", json=_request(url)), 400, fragment)
    assert body["detail"].startswith("images_path[0].image_path: ")
    # No connection but the test client's own (to the service under test) was made.
    assert {port for _host, port in guard.connects[before:]} <= {_app_port(client)}
    return str(body["detail"])


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        # loopback, in every spelling the C library and the URL parsers accept
        ("http://127.1/x.png", "127.1 is 127.0.0.1, a loopback address"),
        ("http://0x7f000001/", "0x7f000001 is 127.0.0.1, a loopback address"),
        ("http://0x7f.0.0.1/", "0x7f.0.0.1 is 127.0.0.1, a loopback address"),
        ("http://017700000001/", "017700000001 is 127.0.0.1, a loopback address"),
        ("http://127.0.0.1./", "127.0.0.1 is a loopback address"),
        ("http://[::ffff:7f00:1]/", "::ffff:7f00:1 is a loopback address"),
        ("http://[0:0:0:0:0:0:0:1]/", "::1 is a loopback address"),
        ("HTTP://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("https://127.0.0.1:9379/v1/text2image", "127.0.0.1 is a loopback address"),
        ("http://localhost./", "'localhost.' always means this machine"),
        ("http://LOCALHOST:9369/health", "'localhost' always means this machine"),
        ("http://foo.localhost/", "'foo.localhost' always means this machine"),
        # unspecified (0.0.0.0 reaches this machine on Linux)
        ("http://0/", "0 is 0.0.0.0, an unspecified address"),
        ("http://0.0.0.0:8080/", "0.0.0.0 is an unspecified address"),
        ("http://[::]/", ":: is an unspecified address"),
        # private and shared
        ("http://172.16.0.1/", "172.16.0.1 is a private address"),
        ("http://192.168.0.1/", "192.168.0.1 is a private address"),
        ("http://[fd00::1]/", "fd00::1 is a private address"),
        ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
        # link-local and the cloud metadata service
        ("http://169.254.169.254./latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://2852039166/", "2852039166 is 169.254.169.254, a link-local address"),
        ("http://0xa9fea9fe/", "0xa9fea9fe is 169.254.169.254, a link-local address"),
        ("http://[::ffff:169.254.169.254]/", "::ffff:a9fe:a9fe is a link-local address"),
        ("http://[fe80::1%25eth0]/", "is a link-local address"),
        ("http://metadata.google.internal/computeMetadata/v1/", "is 169.254.169.254, a link-local address"),
        # names that resolve inward
        ("http://internal.test/a.png", "internal.test is 10.0.0.5, a private address"),
        ("http://v6-internal.test/a.png", "is fd12:3456::1, a private address"),
        ("http://mapped.test/a.png", "a private address"),
        ("http://mixed.test/a.png", "mixed.test is 127.0.0.1, a loopback address"),
        # user-info and parser-confusion tricks
        ("http://a@127.0.0.1/", "URLs with a user name or password are not accepted"),
        ("http://example.com@127.0.0.1/", "URLs with a user name or password are not accepted"),
        ("http://user:pw@example.com/", "URLs with a user name or password are not accepted"),
        ("http://127.0.0.1#@example.com/", "127.0.0.1 is a loopback address"),
        ("http://127.0.0.1:80\\@example.com/", "it is not a valid URL"),
        ("http:///etc/passwd", "it has no host name"),
        # other schemes
        ("gopher://127.0.0.1:70/_SET%20x", "the scheme 'gopher' is not supported"),
        ("dict://127.0.0.1:11211/stat", "the scheme 'dict' is not supported"),
        ("ldap://127.0.0.1/", "the scheme 'ldap' is not supported"),
        ("sftp://127.0.0.1/", "the scheme 'sftp' is not supported"),
        ("file://localhost/etc/passwd", "the scheme 'file' is not supported"),
    ],
)
async def test_urls_that_reach_inward_are_refused_before_connecting(
    i2v: TestClient, guard: NetworkGuard, url: str, fragment: str
) -> None:
    detail = await _refused(i2v, guard, url, fragment)
    assert fragment.startswith(("URLs", "it ", "the scheme")) or NOT_PUBLIC in detail


@pytest.mark.parametrize(
    ("image_path", "fragment"),
    [
        # Not URLs at all (no "scheme://"): never fetched, never read as files.
        ("jar:http://example.com/!/a.png", "looks like a file path"),
        ("javascript:alert(1)", "is not valid base64"),
        ("//127.0.0.1/a.png", "looks like a file path"),
        ("file:/etc/passwd", "is not valid base64"),
        ("\\\\127.0.0.1\\share\\a.png", "looks like a file path"),
    ],
)
async def test_url_lookalikes_are_neither_fetched_nor_read(
    i2v: TestClient, guard: NetworkGuard, image_path: str, fragment: str
) -> None:
    await _refused(i2v, guard, image_path, fragment)
    assert guard.lookups == []


@pytest.fixture
async def public_looking_server(
    aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch, guard: NetworkGuard
) -> TestServer:
    """A loopback image server that the fetch layer is told is public: the first hop passes, so
    each redirect target's own check is what is tested (as it would be for a real public host)."""
    from opea_media.media import fetch

    real = fetch.forbidden_reason
    monkeypatch.setattr(fetch, "forbidden_reason", lambda a: None if str(a) == "127.0.0.1" else real(a))

    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(request.query["to"])

    async def image(request: web.Request) -> web.Response:
        return web.Response(body=png_bytes(), content_type="image/png")

    app = web.Application()
    app.router.add_get("/go", redirect)
    app.router.add_get("/cat.png", image)
    return await aiohttp_server(app, host="127.0.0.1")  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("target", "fragment"),
    [
        ("http://127.0.0.2/", "127.0.0.2 is a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://2130706434/", "2130706434 is 127.0.0.2, a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://metadata.google.internal/", "is 169.254.169.254, a link-local address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://localhost/", "'localhost' always means this machine"),
        ("http://a@example.com/", "URLs with a user name or password are not accepted"),
        ("file:///etc/passwd", "the scheme 'file' is not supported"),
        ("gopher://127.0.0.1:70/_x", "the scheme 'gopher' is not supported"),
    ],
)
async def test_redirects_inward_are_refused_hop_by_hop(
    i2v: TestClient, guard: NetworkGuard, public_looking_server: TestServer, target: str, fragment: str
) -> None:
    port = public_looking_server.port
    url = f"http://127.0.0.1:{port}/go?to={target}"
    response = await i2v.post("/v1/image2video", json=_request(url))
    body = await assert_error(response, 400, fragment)
    assert "redirects to" in body["detail"]
    # One connection to the first hop; none to where it pointed.
    assert [c for c in guard.connects if c[1] != _app_port(i2v)] == [("127.0.0.1", port)]


async def test_the_public_looking_server_itself_is_served(
    i2v: TestClient, guard: NetworkGuard, public_looking_server: TestServer
) -> None:
    """The control for the redirect cases: the same first hop, pointing at an image, succeeds."""
    url = f"http://127.0.0.1:{public_looking_server.port}/go?to=/cat.png"
    response = await i2v.post("/v1/image2video", json=_request(url))
    assert response.status == 200, await response.text()
