"""Typed keys for what a service's app holds; the types are only named here, never imported."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from aiohttp.web_urldispatcher import AbstractRoute

    from ..media.store import OutputStore
    from .bodies import BodyBudget
    from .config import ServerConfig
    from .job_runner import JobRunner
    from .metrics import Metrics
    from .routes import Route
    from .shutdown import Admission
    from .worker import InferenceWorker

CONFIG: web.AppKey[ServerConfig] = web.AppKey("config")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
WORKER: web.AppKey[InferenceWorker] = web.AppKey("worker")
ADMISSION: web.AppKey[Admission] = web.AppKey("admission")
BODY_BUDGET: web.AppKey[BodyBudget] = web.AppKey("body_budget")
IO_POOL: web.AppKey[ThreadPoolExecutor] = web.AppKey("io_pool")
OPENAPI: web.AppKey[bytes] = web.AppKey("openapi")  # the document, serialised once
OUTPUTS: web.AppKey[OutputStore] = web.AppKey("outputs")
JOBS: web.AppKey[JobRunner] = web.AppKey("jobs")  # the jobs API's store and runner, once started
# The route table's entry of each aiohttp route: its error style and whether it needs the key.
ROUTE_OF: web.AppKey[dict[AbstractRoute, Route]] = web.AppKey("route_of")
STARTED_AT: web.AppKey[float] = web.AppKey("started_at")  # time.time() when the app was built
