"""Giving the memory of request bodies back to the system once they are done with.

glibc's malloc keeps most of what a burst of large bodies freed: in its heaps, to reuse. The
process's resident memory then stays at the burst's peak (docs/reliability.md measured it).
malloc_trim(0) returns the free pages; it is called in the I/O threads, at most once every
TRIM_INTERVAL seconds, after bodies worth TRIM_AFTER_BYTES have been released. Elsewhere (musl,
macOS) there is nothing to call and this does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
from collections.abc import Callable
from concurrent.futures import Executor

TRIM_AFTER_BYTES = 64 * 1024 * 1024
TRIM_INTERVAL = 2.0


def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim  # type: ignore[no-any-return]


class Trimmer:
    """Counts released body bytes; past TRIM_AFTER_BYTES, trims in `pool` soon (event loop only)."""

    def __init__(self, pool: Executor) -> None:
        self._pool = pool
        self._trim = _malloc_trim()
        self._released = 0
        self._last = float("-inf")
        self._pending: asyncio.TimerHandle | None = None

    def released(self, size: int) -> None:
        self._released += size
        if self._trim is None or self._pending is not None or self._released < TRIM_AFTER_BYTES:
            return
        loop = asyncio.get_running_loop()
        # Not more often than every TRIM_INTERVAL, but always once after the last burst.
        delay = max(0.0, self._last + TRIM_INTERVAL - loop.time())
        self._pending = loop.call_later(delay, self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._pending, self._released, self._last = None, 0, loop.time()
        assert self._trim is not None
        with contextlib.suppress(RuntimeError):  # the pool has shut down: the process is ending
            loop.run_in_executor(self._pool, self._trim, 0)
