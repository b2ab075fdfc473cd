"""The drain gate, and SIGTERM / SIGINT: stop admitting (503), let requests in progress finish
within the grace period, exit 0."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from ..errors import ShuttingDown
from .keys import ADMISSION, CONFIG, WORKER
from .metrics import Metrics

log = logging.getLogger(__name__)


class Admission:
    """Counts generation requests in progress and turns new ones away once draining."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()

    @contextmanager
    def admit(self) -> Iterator[None]:
        if self.draining:
            raise ShuttingDown()
        self.in_flight += 1
        self._idle.clear()
        self._metrics.requests_in_progress.set(self.in_flight)
        try:
            yield
        finally:
            self.in_flight -= 1
            self._metrics.requests_in_progress.set(self.in_flight)
            if self.in_flight == 0:
                self._idle.set()

    async def drain(self, grace: float) -> bool:
        """Stop admitting, then wait up to `grace` seconds for requests in progress; True if all ended."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            return False
        return True


# After the drain, what aiohttp may still spend writing the last responses and closing connections.
CLOSE_TIMEOUT = 5.0


def drain_on_signals(app: web.Application) -> None:
    """Replace aiohttp's immediate exit on SIGTERM/SIGINT with a drain; a second signal exits at once.

    Only for a real process (web.run_app): tests drive Admission.drain directly.
    """
    app.on_startup.append(_install_handlers)


async def _install_handlers(app: web.Application) -> None:
    loop = asyncio.get_running_loop()
    draining: list[asyncio.Task[None]] = []

    def on_signal(name: str) -> None:
        if draining:
            log.warning("%s again: exiting without waiting for requests in progress", name)
            raise GracefulExit()
        grace = app[CONFIG].shutdown_grace
        log.info(
            "%s: no longer admitting requests; draining for up to %g s", name, grace, extra={"signal": name}
        )
        draining.append(loop.create_task(_drain_then_exit(app)))

    for sig in (signal.SIGTERM, signal.SIGINT):
        # add_signal_handler replaces the handler aiohttp installed before start-up.
        loop.add_signal_handler(sig, on_signal, sig.name)


async def _drain_then_exit(app: web.Application) -> None:
    admission = app[ADMISSION]
    grace = app[CONFIG].shutdown_grace
    if await admission.drain(grace):
        log.info("drained: every request in progress has its answer")
    else:
        log.warning(
            "grace period of %g s is over with %d requests in progress; interrupting them",
            grace,
            admission.in_flight,
            extra={"in_flight": admission.in_flight},
        )
        # Interrupted jobs answer 503 at their next denoising step; give their handlers a moment
        # to send that, rather than have aiohttp cut the connections without a word.
        app[WORKER].abort()
        await admission.drain(CLOSE_TIMEOUT)
    # Raised from a plain callback (as aiohttp's own signal handler does), GracefulExit leaves
    # loop.run_until_complete; web.run_app then runs the cleanup and returns.
    asyncio.get_running_loop().call_soon(_exit)


def _exit() -> None:
    raise GracefulExit()
