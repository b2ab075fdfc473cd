"""Fetch a user-supplied image URL without letting it reach into our own network (SSRF).

Every hop is checked before any connection: scheme, host allowlist, and every address the host
resolves to. The connection then goes to exactly those checked addresses (no second DNS lookup
that a rebinding server could answer differently), and redirects are followed by hand so each
target is checked the same way.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from yarl import URL

from .. import __version__
from ..config import DEFAULT_FETCH_TIMEOUT
from ..errors import InvalidInput
from .images import MAX_INPUT_BYTES
from .url_policy import IPAddress, UrlPolicy, forbidden_reason, normal_host, parse_ip_literal

__all__ = ["UrlPolicy", "fetch_url", "forbidden_reason"]

_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_CHUNK = 64 * 1024
_SHOWN_URL_CHARS = 200


class _PinnedResolver(AbstractResolver):
    """Answers only with addresses fetch_url has checked; anything else fails to resolve."""

    def __init__(self) -> None:
        self._pins: dict[str, list[IPAddress]] = {}

    def pin(self, host: str, addresses: list[IPAddress]) -> None:
        self._pins[host.lower()] = addresses

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        addresses = self._pins.get(host.lower())
        if not addresses:
            raise OSError(errno.EHOSTUNREACH, "host was not checked")
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            ResolveResult(
                hostname=host,  # kept for the Host header and TLS SNI
                host=str(address),
                port=port,
                family=socket.AF_INET6 if address.version == 6 else socket.AF_INET,
                proto=0,
                flags=flags,
            )
            for address in addresses
        ]

    async def close(self) -> None:
        return None


def _shown(url: str | URL) -> str:
    text = str(url)
    return text if len(text) <= _SHOWN_URL_CHARS else text[: _SHOWN_URL_CHARS - 3] + "..."


async def _checked_target(
    text: str, policy: UrlPolicy, *, origin: str | None, field: str | None
) -> tuple[URL, list[IPAddress]]:
    """Parse and check one hop (origin: the first URL, if this hop is a redirect)."""
    subject = _shown(text) if origin is None else f"{origin} redirects to {_shown(text)}, which"

    def refuse(reason: str) -> InvalidInput:
        return InvalidInput(f"{subject} is not allowed: {reason}", field=field)

    try:
        url = URL(text.strip())
    except (ValueError, TypeError):
        raise refuse("it is not a valid URL") from None
    if url.scheme not in ("http", "https"):
        if not url.scheme:
            raise refuse("it has no scheme; use an http:// or https:// URL")
        raise refuse(f"the scheme {url.scheme!r} is not supported; use http or https")
    if url.user is not None or url.password is not None:
        raise refuse("URLs with a user name or password are not accepted")
    host = url.raw_host
    if not host:
        raise refuse("it has no host name")
    if not policy.permits_host(host):
        raise refuse(f"the host {host!r} is not one of {', '.join(policy.allowed_hosts)}")
    if not policy.allow_private and normal_host(host).split(".")[-1] == "localhost":
        raise refuse(f"{host!r} always means this machine; only public addresses may be fetched")
    port = url.port or (443 if url.scheme == "https" else 80)
    lookup = _shown(text) if origin is None else f"{_shown(text)} (redirected from {origin})"
    addresses = await _resolve(host, port, lookup, field)
    literal = normal_host(host) == str(addresses[0])
    if not policy.allow_private:
        for address in addresses:
            kind = forbidden_reason(address)
            if kind is not None:
                what = f"{address} is" if literal else f"{host} is {address},"
                article = "an" if kind[0] in "aeiou" else "a"
                raise refuse(f"{what} {article} {kind} address; only public addresses may be fetched")
    if not literal and parse_ip_literal(host) is not None:
        # 127.1, 2130706433, 0x7f000001: legal to the C library, refused by recent aiohttp, and a
        # classic way to sneak past filters. One spelling per address keeps every layer agreeing.
        raise refuse(f"write the address {host!r} as {addresses[0]}")
    return url, addresses


async def _resolve(host: str, port: int, shown: str, field: str | None) -> list[IPAddress]:
    literal = parse_ip_literal(host)
    if literal is not None:
        return [literal]
    loop = asyncio.get_running_loop()
    try:
        # loop.getaddrinfo runs the blocking C resolver in a worker thread.
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        raise InvalidInput(
            f"could not fetch {shown}: cannot resolve the host name {host!r}", field=field
        ) from None
    addresses: list[IPAddress] = []
    for family, _type, _proto, _name, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6):
            address = ipaddress.ip_address(sockaddr[0])
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise InvalidInput(f"could not fetch {shown}: the host name {host!r} has no address", field=field)
    return addresses


def _short_reason(err: aiohttp.ClientError) -> str:
    """A few words for a network failure (the full exception stays chained for the log)."""
    if isinstance(err, aiohttp.ClientConnectorCertificateError):
        return "the server's TLS certificate could not be verified"
    if isinstance(err, aiohttp.ClientSSLError):
        return "the TLS handshake failed"
    if isinstance(err, aiohttp.ClientConnectorError):
        code = err.os_error.errno
        why = {
            errno.ECONNREFUSED: "connection refused",
            errno.ETIMEDOUT: "connection timed out",
            errno.EHOSTUNREACH: "host unreachable",
            errno.ENETUNREACH: "network unreachable",
            errno.ECONNRESET: "connection reset",
        }.get(code if code is not None else -1, "connection failed")
        host = f"[{err.host}]" if ":" in err.host else err.host
        return f"cannot connect to {host}:{err.port} ({why})"
    if isinstance(err, TimeoutError):
        return "the server took too long to answer"
    if isinstance(err, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    if isinstance(err, aiohttp.ClientPayloadError):
        return "the response body was cut off or malformed"
    if isinstance(err, aiohttp.InvalidURL):
        return "the URL is not valid"
    if isinstance(err, aiohttp.ClientResponseError):
        return "the server sent an invalid response"
    return "a network error"


async def _read_image(
    response: aiohttp.ClientResponse, subject: str, max_bytes: int, field: str | None
) -> bytes:
    def failed(reason: str) -> InvalidInput:
        return InvalidInput(f"could not fetch {subject}: {reason}", field=field)

    if not 200 <= response.status < 300:
        reason = f" {response.reason}" if response.reason else ""
        raise failed(f"the server answered {response.status}{reason}")
    if "Content-Type" not in response.headers:
        raise failed("the server sent no Content-Type; expected an image/* type")
    if not response.content_type.startswith("image/"):
        raise failed(f"the server sent {response.content_type!r}, not an image")
    length = response.content_length
    if length is not None and length > max_bytes:
        raise failed(f"the image is {length} bytes; the limit is {max_bytes} bytes")
    body = bytearray()
    # Counted as it arrives (after any gzip decoding): a lying or missing length cannot make
    # us hold more than the limit.
    async for chunk in response.content.iter_chunked(_CHUNK):
        body += chunk
        if len(body) > max_bytes:
            raise failed(f"the image is larger than the limit of {max_bytes} bytes")
    if not body:
        raise failed("the server sent an empty body")
    return bytes(body)


async def fetch_url(
    url: str,
    policy: UrlPolicy,
    *,
    max_bytes: int = MAX_INPUT_BYTES,
    timeout: float = DEFAULT_FETCH_TIMEOUT,
    max_redirects: int = 3,
    field: str | None = "image_path",
) -> bytes:
    """Download an image from an http(s) URL under `policy`; failures raise InvalidInput."""
    shown = _shown(url)
    try:
        # One deadline for everything: name lookups, every redirect hop and the body.
        return await asyncio.wait_for(_fetch(url, policy, max_bytes, timeout, max_redirects, field), timeout)
    except TimeoutError:
        raise InvalidInput(
            f"could not fetch {shown}: no complete answer within {timeout:g} s", field=field
        ) from None


async def _fetch(
    url: str, policy: UrlPolicy, max_bytes: int, timeout: float, max_redirects: int, field: str | None
) -> bytes:
    shown = _shown(url)
    resolver = _PinnedResolver()
    connector = aiohttp.TCPConnector(resolver=resolver, use_dns_cache=False, force_close=True)
    session = aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout),
        cookie_jar=aiohttp.DummyCookieJar(),  # no cookies carried from one host to the next
        headers={"User-Agent": f"opea-media/{__version__}", "Accept": "image/*"},
        trust_env=False,  # a proxy from the environment would connect where we did not check
    )
    async with session:
        current, origin = url, None
        for _hop in range(max_redirects + 1):
            target, addresses = await _checked_target(current, policy, origin=origin, field=field)
            resolver.pin(target.raw_host or "", addresses)
            try:
                async with session.get(target, allow_redirects=False) as response:
                    if response.status not in _REDIRECTS:
                        return await _read_image(response, shown, max_bytes, field)
                    location = response.headers.get("Location")
                    if not location:
                        raise InvalidInput(
                            f"could not fetch {shown}: the server answered {response.status}"
                            " without a Location",
                            field=field,
                        )
                    try:
                        current = str(target.join(URL(location)))
                    except (ValueError, TypeError):
                        raise InvalidInput(
                            f"could not fetch {shown}: the server redirected to an invalid URL",
                            field=field,
                        ) from None
                    origin = shown
            except aiohttp.ClientError as err:
                raise InvalidInput(f"could not fetch {shown}: {_short_reason(err)}", field=field) from err
    raise InvalidInput(f"could not fetch {shown}: more than {max_redirects} redirects", field=field)
