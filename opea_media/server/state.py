"""Typed keys for what the app holds, and the drain state of a running service."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from aiohttp import web

from .config import ServerConfig
from .errors import ShuttingDown
from .metrics import Metrics
from .worker import InferenceWorker


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


CONFIG = web.AppKey("config", ServerConfig)
METRICS = web.AppKey("metrics", Metrics)
WORKER = web.AppKey("worker", InferenceWorker)
ADMISSION = web.AppKey("admission", Admission)
IO_POOL = web.AppKey("io_pool", ThreadPoolExecutor)
OPENAPI = web.AppKey("openapi", bytes)  # the document, serialised once
