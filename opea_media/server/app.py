"""The app factory: one service (text2image or image2video), its worker, routes and middlewares."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web
from aiohttp.typedefs import Middleware

from . import handlers
from .auth import bearer_auth_middleware
from .config import ServerConfig
from .jobs import ModelHandleLike
from .logs import adopt_library_loggers
from .metrics import Metrics
from .middleware import access_middleware, error_middleware
from .model_slot import ModelSlot
from .openapi import openapi_document
from .state import ADMISSION, CONFIG, IO_POOL, METRICS, OPENAPI, WORKER, Admission
from .worker import InferenceWorker

# How long cleanup waits for an interrupted pipeline call to reach its next step.
WORKER_STOP_TIMEOUT = 30.0

GENERATE_ROUTES = {
    "text2image": ("/v1/text2image", handlers.text2image),
    "image2video": ("/v1/image2video", handlers.image2video),
}


def _open_from_registry(config: ServerConfig) -> ModelHandleLike:
    """Runs on the worker thread: importing torch and diffusers takes seconds; the port is open by then."""
    from ..models import ModelRegistry

    adopt_library_loggers()
    registry = ModelRegistry(
        device=config.device, dtype=config.dtype, cache_dir=config.cache_dir, tuning=config.tuning
    )
    return registry.handle(config.service, config.model_ref)


def create_app(config: ServerConfig, *, model_handle: ModelHandleLike | None = None) -> web.Application:
    """Build the service. `model_handle` replaces the registry lookup (tests, embedding)."""
    model_ref = model_handle.ref if model_handle is not None else config.model_ref

    def open_model() -> ModelHandleLike:
        return model_handle if model_handle is not None else _open_from_registry(config)

    metrics = Metrics(service=config.service, model=model_ref, model_ready=lambda: slot.ready)
    slot = ModelSlot(task=config.service, model_ref=model_ref, open_model=open_model, metrics=metrics)
    worker = InferenceWorker(
        slot=slot, max_queue=config.max_queue, max_batch_size=config.max_batch_size, metrics=metrics
    )
    middlewares: list[Middleware] = [access_middleware, error_middleware]
    if config.api_key:
        middlewares.append(bearer_auth_middleware(config.api_key))  # inside the error middleware: JSON 401
    app = web.Application(middlewares=middlewares, client_max_size=config.max_body_bytes)
    app[CONFIG] = config
    app[METRICS] = metrics
    app[WORKER] = worker
    app[ADMISSION] = Admission(metrics)
    app[IO_POOL] = ThreadPoolExecutor(max_workers=config.io_threads, thread_name_prefix="opea-media-io")
    app[OPENAPI] = json.dumps(openapi_document(config), indent=1).encode("utf-8")
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/health/live", handlers.live)
    app.router.add_get("/health/ready", handlers.ready)
    app.router.add_get("/metrics", handlers.metrics)
    app.router.add_get("/openapi.json", handlers.openapi)
    path, generate = GENERATE_ROUTES[config.service]
    app.router.add_post(path, generate)
    app.cleanup_ctx.append(_model_worker)
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
