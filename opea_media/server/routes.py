"""The route table: every endpoint once, with what it takes and answers. The router and the
OpenAPI document are both built from it (app.py, openapi.py)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp.typedefs import Handler
from pydantic import BaseModel

from ..config import TASKS, Task
from . import handlers
from .wire import (
    Alive,
    Dead,
    Healthy,
    Image2VideoRequest,
    Image2VideoResponse,
    Text2ImageRequest,
    Text2ImageResponse,
    Unhealthy,
)

JSON = "application/json"


@dataclass(frozen=True)
class Answer:
    """One status a route answers: what it means and the body's schema (None: not JSON)."""

    description: str
    body: type[BaseModel] | None = None
    media_type: str = JSON
    retry_after: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    answers: Mapping[int, Answer]
    request: type[BaseModel] | None = None
    # The error statuses beyond `answers`, described once in openapi.py (with the Error body).
    errors: tuple[int, ...] = ()
    services: tuple[Task, ...] = TASKS


_READINESS = {
    200: Answer("The model serves.", Healthy),
    503: Answer("Not serving: loading, failed to load, or draining.", Unhealthy, retry_after=True),
}
GENERATE_ERRORS = (400, 413, 415, 500, 503, 504)

ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/text2image",
        handlers.text2image,
        "text2image",
        "Generate images from a prompt",
        {200: Answer("The images.", Text2ImageResponse)},
        request=Text2ImageRequest,
        errors=GENERATE_ERRORS,
        services=("text2image",),
    ),
    Route(
        "POST",
        "/v1/image2video",
        handlers.image2video,
        "image2video",
        "Animate images into clips",
        {200: Answer("The clips' frames.", Image2VideoResponse)},
        request=Image2VideoRequest,
        errors=GENERATE_ERRORS,
        services=("image2video",),
    ),
    Route("GET", "/health", handlers.health, "health", "Readiness: 200 once the model serves", _READINESS),
    Route("GET", "/health/ready", handlers.health, "ready", "The same as /health", _READINESS),
    Route(
        "GET",
        "/health/live",
        handlers.live,
        "live",
        "Liveness: 200 while the process can serve; 503 once its worker thread died",
        {
            200: Answer("The process runs.", Alive),
            503: Answer("The worker thread died: restart the process.", Dead),
        },
    ),
    Route(
        "GET",
        "/metrics",
        handlers.metrics,
        "metrics",
        "Prometheus metrics",
        {200: Answer("Prometheus text format.", media_type="text/plain")},
    ),
    Route(
        "GET", "/openapi.json", handlers.openapi, "openapi", "This document", {200: Answer("OpenAPI 3.1.")}
    ),
)


def routes_for(service: Task) -> list[Route]:
    return [route for route in ROUTES if service in route.services]
