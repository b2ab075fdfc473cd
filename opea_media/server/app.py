"""The app factory: one service (text2image or image2video), its worker, routes and middlewares;
and the listening socket `serve` binds before anything else starts."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from ..media.store import OutputStore
from ..models.handle import ModelHandle
from ..models.registry import ModelRegistry
from .allocator import Trimmer
from .bodies import BodyBudget, body_budget_middleware, defer_continue, drain_middleware
from .config import ServerConfig
from .job_runner import jobs_context
from .job_store import SqlJobStore
from .keys import (
    ADMISSION,
    BODY_BUDGET,
    CONFIG,
    IO_POOL,
    METRICS,
    OPENAPI,
    OUTPUTS,
    ROUTE_OF,
    STARTED_AT,
    WORKER,
)
from .metrics import Metrics
from .middleware import access_middleware, api_key_middleware, cors_headers, cors_middleware, error_middleware
from .openapi import openapi_document
from .outputs import keep_outputs_bounded
from .routes import routes_for
from .shutdown import Admission
from .worker import InferenceWorker

# How long cleanup waits for an interrupted pipeline call to reach its next step.
WORKER_STOP_TIMEOUT = 30.0


def create_app(
    config: ServerConfig,
    *,
    model_handle: ModelHandle[Any] | None = None,
    job_store: SqlJobStore | None = None,
) -> web.Application:
    """Build the service. `model_handle` replaces the registry's (tests, embedding); `job_store`
    is the store `serve` opened already (None: opened as the app starts).

    Nothing here imports torch: the handle loads the model on the worker thread, after the port is open.
    """
    if model_handle is None:
        registry = ModelRegistry(
            device=config.device,
            dtype=config.dtype,
            cache_dir=config.cache_dir,
            tuning=config.tuning,
            allow_pickle=config.allow_pickle_weights,
        )
        model_handle = registry.handle(config.service, config.model_ref)
    handle = model_handle
    metrics = Metrics(
        service=config.service,
        model=handle.ref,
        model_ready=lambda: worker.ready,
        load_seconds=lambda: handle.load_seconds,
        convert_seconds=lambda: handle.convert_seconds,
    )
    worker = InferenceWorker(
        handle=handle, max_queue=config.max_queue, max_batch_size=config.max_batch_size, metrics=metrics
    )
    middlewares: list[Middleware] = [drain_middleware(), access_middleware]
    if config.cors_origins:
        middlewares.append(cors_middleware(config.cors_origins))  # preflights carry no API key
    middlewares.append(error_middleware)
    if config.api_key:
        middlewares.append(api_key_middleware(config.api_key))  # inside the error middleware: JSON 401
    middlewares.append(body_budget_middleware)  # after the key: a refused client reserves nothing
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    if config.cors_origins:
        app.on_response_prepare.append(cors_headers(config.cors_origins))
    app[CONFIG] = config
    app[STARTED_AT] = time.time()
    app[OUTPUTS] = OutputStore(
        config.output_folder, retention=config.output_retention, max_bytes=config.output_max_bytes
    )
    app[METRICS] = metrics
    app[WORKER] = worker
    app[ADMISSION] = Admission(metrics)
    app[IO_POOL] = ThreadPoolExecutor(max_workers=config.io_threads, thread_name_prefix="opea-media-io")
    trimmer = Trimmer(app[IO_POOL])
    app[BODY_BUDGET] = BodyBudget(
        config.body_budget_bytes, on_held=metrics.body_bytes_held.set, on_released=trimmer.released
    )
    app[OPENAPI] = json.dumps(openapi_document(config), indent=1).encode("utf-8")
    app[ROUTE_OF] = {
        app.router.add_route(route.method, route.path, route.handler, expect_handler=defer_continue): route
        for route in routes_for(config.service)
    }
    app.cleanup_ctx.append(_model_worker)
    app.cleanup_ctx.append(keep_outputs_bounded)
    app.cleanup_ctx.append(functools.partial(jobs_context, store=job_store))  # cleaned up first
    return app


async def _model_worker(app: web.Application) -> AsyncIterator[None]:
    """Start loading the model as the app starts; at cleanup stop the worker and the I/O threads."""
    worker = app[WORKER]
    worker.start()
    await _start_io_threads(app[IO_POOL], app[CONFIG].io_threads)
    yield
    # stop() joins the thread: off the loop, so the last responses still get written meanwhile.
    await asyncio.get_running_loop().run_in_executor(None, worker.stop, WORKER_STOP_TIMEOUT)
    app[IO_POOL].shutdown(wait=False, cancel_futures=True)


async def _start_io_threads(pool: ThreadPoolExecutor, count: int) -> None:
    """Start every I/O thread now rather than on demand: the process then keeps one thread count
    from start-up on, so a count that grows in production (or in the soak test) means a leak."""
    barrier = threading.Barrier(count)

    def wait() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            barrier.wait(timeout=10)

    loop = asyncio.get_running_loop()
    await asyncio.gather(*(loop.run_in_executor(pool, wait) for _ in range(count)))


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
