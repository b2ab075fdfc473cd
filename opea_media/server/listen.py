"""Bind the listening socket before anything else starts, so a taken port fails at once."""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int, *, backlog: int = 128) -> socket.socket:
    """A bound, listening TCP socket for web.run_app(sock=...); OSError if the address is unusable.

    Without this, aiohttp binds only after the app has started, and the model load begun at
    start-up would have to finish before a "port in use" error could end the process.
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as asyncio does on POSIX
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # as asyncio does
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock
