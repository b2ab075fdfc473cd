"""Which URLs and addresses fetch_url may reach: the rules alone, with no networking."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SHARED = ipaddress.IPv4Network("100.64.0.0/10")  # carrier-grade NAT, RFC 6598
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs fetch_url may reach.

    allow_private: also reach loopback, private, link-local and other non-public addresses
    (a trusted deployment, or tests). allowed_hosts: when not empty, only these host names
    (compared case-insensitively, a trailing dot ignored); both rules apply together.
    """

    allow_private: bool = False
    allowed_hosts: tuple[str, ...] = ()

    def permits_host(self, host: str) -> bool:
        if not self.allowed_hosts:
            return True
        return normal_host(host) in {normal_host(allowed) for allowed in self.allowed_hosts}


def normal_host(host: str) -> str:
    """Lower case, no brackets or trailing dot, IP literals in their canonical spelling."""
    host = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(host))  # one spelling per IP literal
    except ValueError:
        return host


def forbidden_reason(address: IPAddress) -> str | None:
    """What kind of non-public address this is ("loopback", "private", ...), or None if public."""
    if isinstance(address, ipaddress.IPv6Address):
        # IPv4-mapped, 6to4 and NAT64 addresses reach the IPv4 address inside them.
        embedded = address.ipv4_mapped or address.sixtofour
        if embedded is None and address in _NAT64:
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None:
            return forbidden_reason(embedded)
    kinds = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("shared (carrier-grade NAT)", address in _SHARED),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
        ("site-local", getattr(address, "is_site_local", False)),
        ("non-public", not address.is_global),
    )
    return next((kind for kind, hit in kinds if hit), None)


def parse_ip_literal(host: str) -> IPAddress | None:
    """The address a numeric host means, or None for a name that needs DNS."""
    # "127.0.0.1." is still 127.0.0.1: a trailing dot must not turn a literal into a DNS lookup.
    host = host[:-1] if host.endswith(".") and not host.endswith("..") else host
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # The legacy spellings the C library accepts too (127.1, 0x7f000001, 2130706433,
        # 0177.0.0.1): read them the way a connect() would, then check that address.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except (OSError, ValueError):
        return None
