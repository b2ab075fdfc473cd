"""opea_media.media.fetch: user-supplied image URLs, fetched without reaching our own network.

Every test runs under a guard: real DNS is replaced by a small table (no query leaves the
machine), and any connection to an address other than loopback fails the test. Refusals are
asserted to happen before any connection at all.
"""

from __future__ import annotations

import asyncio
import http.server
import io
import ipaddress
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from PIL import Image

from opea_media.errors import InvalidInput
from opea_media.media.fetch import UrlPolicy, fetch_url, forbidden_reason

ServerFactory = Callable[..., Awaitable[TestServer]]
HOSTS = web.AppKey("hosts", list[str])  # the Host header of each image request

PNG = Image.new("RGB", (16, 16), (200, 30, 60))
_buffer = io.BytesIO()
PNG.save(_buffer, format="PNG")
PNG_BYTES = _buffer.getvalue()

PRIVATE = UrlPolicy(allow_private=True)
PUBLIC_ONLY = UrlPolicy()

FAKE_DNS = {
    "images.test": ["127.0.0.1"],
    "internal.test": ["10.0.0.5"],
    "metadata.test": ["169.254.169.254"],
    "v6-private.test": ["fd12:3456::1"],
    "mapped.test": ["::ffff:192.168.0.1"],
    "mixed.test": ["93.184.215.14", "127.0.0.1"],  # one public answer is not enough
}


@dataclass
class NetworkGuard:
    lookups: list[str] = field(default_factory=list)
    connects: list[tuple[str, int]] = field(default_factory=list)


@pytest.fixture(autouse=True)
def media_network_guard(monkeypatch: pytest.MonkeyPatch) -> NetworkGuard:
    guard = NetworkGuard()
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host
        guard.lookups.append(name)
        answers = FAKE_DNS.get((name or "").rstrip(".").lower())
        if answers is None:
            # Numeric hosts only: a real name lookup could leave the machine.
            return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        results = []
        for answer in answers:
            v6 = ":" in answer
            sockaddr = (answer, port or 0, 0, 0) if v6 else (answer, port or 0)
            fam = socket.AF_INET6 if v6 else socket.AF_INET
            results.append((fam, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", sockaddr))
        return results

    def guarded_connect(sock: socket.socket, address):  # type: ignore[no-untyped-def]
        host = address[0] if isinstance(address, tuple) else str(address)
        guard.connects.append((host, address[1] if isinstance(address, tuple) else 0))
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise AssertionError(f"the test tried to connect to {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return guard


async def _png(request: web.Request) -> web.Response:
    request.app[HOSTS].append(request.host)
    return web.Response(body=PNG_BYTES, content_type="image/png")


async def _redirect(request: web.Request) -> web.Response:
    raise web.HTTPFound(request.query["to"])


async def _chain(request: web.Request) -> web.Response:
    left = int(request.match_info["left"])
    if left == 0:
        return await _png(request)
    raise web.HTTPFound(f"/chain/{left - 1}")


async def _loop(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/loop")


async def _chunked_big(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "image/png"})
    await response.prepare(request)  # no Content-Length: the limit must hold while streaming
    for _ in range(10):
        await response.write(b"\x00" * 1000)
    await response.write_eof()
    return response


async def _declared_big(request: web.Request) -> web.Response:
    return web.Response(body=b"\x00" * 5000, content_type="image/png")


async def _text(request: web.Request) -> web.Response:
    return web.Response(text="<html>not an image</html>", content_type="text/html")


async def _empty(request: web.Request) -> web.Response:
    return web.Response(body=b"", content_type="image/png")


async def _slow(request: web.Request) -> web.Response:
    await asyncio.sleep(5)
    return await _png(request)


@pytest.fixture
async def media_server(aiohttp_server: ServerFactory) -> TestServer:
    app = web.Application()
    app[HOSTS] = []
    app.router.add_get("/img.png", _png)
    app.router.add_get("/redirect", _redirect)
    app.router.add_get("/chain/{left}", _chain)
    app.router.add_get("/loop", _loop)
    app.router.add_get("/chunked-big", _chunked_big)
    app.router.add_get("/declared-big", _declared_big)
    app.router.add_get("/text", _text)
    app.router.add_get("/empty", _empty)
    app.router.add_get("/slow", _slow)
    return await aiohttp_server(app, host="127.0.0.1")


def _url(server: TestServer, path: str) -> str:
    return f"http://127.0.0.1:{server.port}{path}"


async def _refused(url: str, policy: UrlPolicy = PUBLIC_ONLY, **options: object) -> str:
    with pytest.raises(InvalidInput) as caught:
        await fetch_url(url, policy, **options)  # type: ignore[arg-type]
    message = str(caught.value)
    assert "Traceback" not in message and "Error(" not in message
    return message


# --- the happy path ----------------------------------------------------------------------------


async def test_fetch_png_from_a_local_server(
    media_server: TestServer, media_network_guard: NetworkGuard
) -> None:
    assert await fetch_url(_url(media_server, "/img.png"), PRIVATE) == PNG_BYTES
    assert media_network_guard.connects == [("127.0.0.1", media_server.port)]


async def test_the_same_url_is_refused_without_allow_private(
    media_server: TestServer, media_network_guard: NetworkGuard
) -> None:
    message = await _refused(_url(media_server, "/img.png"))
    assert message.startswith("image_path: http://127.0.0.1:")
    assert "127.0.0.1 is a loopback address; only public addresses may be fetched" in message
    assert media_network_guard.connects == []


async def test_connects_to_the_checked_address_and_keeps_the_host_name(
    media_server: TestServer, media_network_guard: NetworkGuard
) -> None:
    url = f"http://images.test:{media_server.port}/img.png"
    assert await fetch_url(url, PRIVATE) == PNG_BYTES
    # One lookup (ours, checked); aiohttp was handed those addresses instead of asking again.
    assert media_network_guard.lookups.count("images.test") == 1
    assert media_network_guard.connects == [("127.0.0.1", media_server.port)]
    assert media_server.app[HOSTS] == [f"images.test:{media_server.port}"]


async def test_a_relative_redirect_is_followed(media_server: TestServer) -> None:
    assert await fetch_url(_url(media_server, "/redirect?to=/img.png"), PRIVATE) == PNG_BYTES


class _PlainHandler(http.server.BaseHTTPRequestHandler):
    """Answers every GET with PNG bytes and, unlike aiohttp, can leave out Content-Type."""

    def do_GET(self) -> None:  # noqa: N802 (the name http.server calls)
        self.send_response(200)
        if self.path != "/no-type":
            self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(PNG_BYTES)))
        self.end_headers()
        self.wfile.write(PNG_BYTES)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def media_plain_server() -> Iterator[str]:
    """A stdlib HTTP server in a thread; yields its base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _PlainHandler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


async def test_missing_content_type(media_plain_server: str) -> None:
    message = await _refused(f"{media_plain_server}/no-type", PRIVATE)
    assert message.endswith("the server sent no Content-Type; expected an image/* type")


# --- SSRF: refused before any connection -------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://127.0.0.1/", "127.0.0.1 is a loopback address"),
        ("http://[::1]/", "::1 is a loopback address"),
        ("http://10.0.0.1/", "10.0.0.1 is a private address"),
        ("http://172.16.0.1/", "172.16.0.1 is a private address"),
        ("http://192.168.1.1/", "192.168.1.1 is a private address"),
        ("http://169.254.169.254/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("http://100.64.0.1/", "100.64.0.1 is a shared (carrier-grade NAT) address"),
        ("http://0.0.0.0/", "0.0.0.0 is an unspecified address"),
        ("http://[::ffff:127.0.0.1]/", "is a loopback address"),
        ("http://[::ffff:a9fe:a9fe]/", "is a link-local address"),
        ("http://[fd00::1]/", "fd00::1 is a private address"),
        ("http://[fe80::1]/", "fe80::1 is a link-local address"),
        ("http://[2002:7f00:1::]/", "is a loopback address"),
        ("http://[64:ff9b::a00:1]/", "is a private address"),
        ("http://224.0.0.1/", "224.0.0.1 is a multicast address"),
        ("http://2130706433/", "2130706433 is 127.0.0.1, a loopback address"),
        ("http://0x7f000001/", "0x7f000001 is 127.0.0.1, a loopback address"),
        ("http://0177.0.0.1/", "0177.0.0.1 is 127.0.0.1, a loopback address"),
        ("http://127.1/", "127.1 is 127.0.0.1, a loopback address"),
        ("http://0/", "0 is 0.0.0.0, an unspecified address"),
        ("http://localhost/", "'localhost' always means this machine"),
        ("http://localhost./", "'localhost.' always means this machine"),
        ("http://LocalHost:8080/", "'localhost' always means this machine"),
        ("http://app.localhost/", "always means this machine"),
        ("http://a@127.0.0.1/", "URLs with a user name or password are not accepted"),
        ("http://user:secret@example.com/", "URLs with a user name or password are not accepted"),
        ("http://internal.test/", "internal.test is 10.0.0.5, a private address"),
        ("http://metadata.test/", "metadata.test is 169.254.169.254, a link-local address"),
        ("http://v6-private.test/", "is fd12:3456::1, a private address"),
        ("http://mapped.test/", "a private address"),
        ("http://mixed.test/", "mixed.test is 127.0.0.1, a loopback address"),
    ],
)
async def test_ssrf_refused_before_connecting(url: str, why: str, media_network_guard: NetworkGuard) -> None:
    message = await _refused(url)
    assert "is not allowed" in message
    assert why in message
    assert media_network_guard.connects == []


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/a.png",
        "gopher://x:70/_",
        "data:image/png;base64,AAAA",
        "jar:http://x/!/",
        "//example.com/a.png",
    ],
)
async def test_other_schemes_are_refused(url: str, media_network_guard: NetworkGuard) -> None:
    message = await _refused(url)
    assert "use http or https" in message or "no scheme" in message
    assert media_network_guard.connects == [] and media_network_guard.lookups == []


async def test_odd_numeric_spellings_are_refused_even_when_private_is_allowed(
    media_network_guard: NetworkGuard,
) -> None:
    message = await _refused("http://2130706433/", PRIVATE)
    assert "write the address '2130706433' as 127.0.0.1" in message
    assert media_network_guard.connects == []


async def test_unresolvable_name(media_network_guard: NetworkGuard) -> None:
    message = await _refused("http://no-such-host.test/a.png")
    assert "cannot resolve the host name 'no-such-host.test'" in message
    assert media_network_guard.connects == []


# --- host allowlist and redirects --------------------------------------------------------------


async def test_allowed_hosts(media_server: TestServer, media_network_guard: NetworkGuard) -> None:
    policy = UrlPolicy(allow_private=True, allowed_hosts=("Images.Test.",))
    url = f"http://IMAGES.test:{media_server.port}/img.png"
    assert await fetch_url(url, policy) == PNG_BYTES
    message = await _refused(_url(media_server, "/img.png"), policy)
    assert "the host '127.0.0.1' is not one of Images.Test." in message
    assert media_network_guard.connects == [("127.0.0.1", media_server.port)]  # the first fetch only


@pytest.mark.parametrize(
    ("target", "why"),
    [
        ("http://10.0.0.1/secret", "the host '10.0.0.1' is not one of 127.0.0.1"),
        ("http://169.254.169.254/latest/meta-data/", "is not one of 127.0.0.1"),
        ("http://localhost:{port}/img.png", "the host 'localhost' is not one of 127.0.0.1"),
        ("file:///etc/passwd", "the scheme 'file' is not supported"),
        ("http://a@127.0.0.1:{port}/img.png", "user name or password"),
    ],
)
async def test_each_redirect_hop_is_checked_again(
    media_server: TestServer, media_network_guard: NetworkGuard, target: str, why: str
) -> None:
    # The first hop passes (loopback allowed, host listed); the redirect target must not.
    policy = UrlPolicy(allow_private=True, allowed_hosts=("127.0.0.1",))
    first = _url(media_server, "/redirect?to=" + target.format(port=media_server.port))
    message = await _refused(first, policy)
    assert "redirects to" in message and why in message
    assert media_network_guard.connects == [("127.0.0.1", media_server.port)]


async def test_redirect_to_a_private_address_under_the_public_policy(
    media_server: TestServer, media_network_guard: NetworkGuard
) -> None:
    # Pretend loopback is public for the first hop only, to show the second hop's own check.
    from opea_media.media import fetch

    real = fetch.forbidden_reason
    first = _url(media_server, "/redirect?to=http://192.168.1.1/")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            fetch, "forbidden_reason", lambda address: None if address.is_loopback else real(address)
        )
        message = await _refused(first)
    assert "redirects to http://192.168.1.1/, which is not allowed: 192.168.1.1 is a private" in message
    assert media_network_guard.connects == [("127.0.0.1", media_server.port)]


async def test_redirect_limit(media_server: TestServer) -> None:
    assert await fetch_url(_url(media_server, "/chain/3"), PRIVATE, max_redirects=3) == PNG_BYTES
    message = await _refused(_url(media_server, "/chain/4"), PRIVATE, max_redirects=3)
    assert message.endswith("more than 3 redirects")
    assert (await _refused(_url(media_server, "/loop"), PRIVATE)).endswith("more than 3 redirects")
    assert "more than 0 redirects" in await _refused(_url(media_server, "/chain/1"), PRIVATE, max_redirects=0)


# --- what comes back ---------------------------------------------------------------------------


async def test_body_over_the_limit_while_streaming(media_server: TestServer) -> None:
    message = await _refused(_url(media_server, "/chunked-big"), PRIVATE, max_bytes=4000)
    assert "larger than the limit of 4000 bytes" in message


async def test_declared_length_over_the_limit(media_server: TestServer) -> None:
    message = await _refused(_url(media_server, "/declared-big"), PRIVATE, max_bytes=4000)
    assert "the image is 5000 bytes; the limit is 4000 bytes" in message


async def test_not_an_image(media_server: TestServer) -> None:
    message = await _refused(_url(media_server, "/text"), PRIVATE)
    assert "the server sent 'text/html', not an image" in message


async def test_empty_body(media_server: TestServer) -> None:
    assert "empty body" in await _refused(_url(media_server, "/empty"), PRIVATE)


async def test_http_error_status(media_server: TestServer) -> None:
    message = await _refused(_url(media_server, "/missing.png"), PRIVATE, field="images_path[1]")
    assert message.startswith("images_path[1]: could not fetch http://127.0.0.1:")
    assert message.endswith("the server answered 404 Not Found")


async def test_timeout(media_server: TestServer) -> None:
    message = await _refused(_url(media_server, "/slow"), PRIVATE, timeout=0.3)
    assert "within 0.3 s" in message or "took too long" in message


async def test_connection_refused() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again at once: nothing listens there
    message = await _refused(f"http://127.0.0.1:{port}/a.png", PRIVATE)
    assert message.endswith(f"cannot connect to 127.0.0.1:{port} (connection refused)")


# --- the address rules on their own ------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("8.8.8.8", None),
        ("93.184.215.14", None),
        ("2606:4700:4700::1111", None),
        ("::ffff:8.8.8.8", None),
        ("2002:808:808::1", None),  # 6to4 around a public address
        ("64:ff9b::808:808", None),  # NAT64 around a public address
        ("127.255.255.254", "loopback"),
        ("0.1.2.3", "private"),
        ("192.0.2.1", "private"),
        ("198.18.0.1", "private"),
        ("240.0.0.1", "private"),
        ("255.255.255.255", "private"),
        ("100.127.255.255", "shared (carrier-grade NAT)"),
        ("::", "unspecified"),
        ("ff02::1", "multicast"),
        ("fec0::1", "site-local"),
        ("2001:db8::1", "private"),
        ("::ffff:10.1.2.3", "private"),
        ("2002:a9fe:a9fe::", "link-local"),
        ("64:ff9b::7f00:1", "loopback"),
        ("::127.0.0.1", "reserved"),
    ],
)
def test_forbidden_reason(address: str, kind: str | None) -> None:
    assert forbidden_reason(ipaddress.ip_address(address)) == kind


def test_policy_host_matching() -> None:
    policy = UrlPolicy(allowed_hosts=("CDN.example.com.", "[::1]"))
    assert policy.permits_host("cdn.example.com")
    assert policy.permits_host("cdn.EXAMPLE.com.")
    assert policy.permits_host("0:0::1")
    assert not policy.permits_host("evil.example.com")
    assert UrlPolicy().permits_host("anything.example")
