"""The route table: every endpoint once, with what it takes and answers. The router and the
OpenAPI document are both built from it (app.py, openapi.py)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from aiohttp.typedefs import Handler
from pydantic import BaseModel

from ..config import JOBS_PATH, TASKS, Task
from . import a1111, handlers, jobs_api, openai_api, openai_edits, outputs, ui
from . import a1111_wire as w
from .error_styles import A1111, OPEA, OPENAI, ErrorStyle
from .job_runner import RESULT_FORMATS
from .jobs_wire import JobList, JobView
from .openai_wire import (
    CompletedEvent,
    ImageEditRequest,
    ImageGenerationRequest,
    ImagesResponse,
    ModelList,
    OpenAIModel,
    PartialImageEvent,
    StreamError,
)
from .wire import (
    Alive,
    Dead,
    Healthy,
    Image2VideoRequest,
    Image2VideoResponse,
    OpeaHealthCheck,
    Text2ImageRequest,
    Text2ImageResponse,
    Unhealthy,
)

JSON = "application/json"
EVENT_STREAM = "text/event-stream"
MULTIPART = "multipart/form-data"
STATIC_TYPES = tuple(sorted(set(ui.STATIC_TYPES.values())))


@dataclass(frozen=True)
class Answer:
    """One status a route answers: what it means and the body's schema (None: not JSON)."""

    description: str
    body: type[BaseModel] | None = None
    media_type: str = JSON
    retry_after: bool = False
    also: tuple[str, ...] = ()  # more media types the same status may come as (text bodies)
    events: tuple[type[BaseModel], ...] = ()  # what the data of a text/event-stream's events holds


# Paths under these need the API key when one is set (unless their route is `open`); health,
# metrics and the OpenAPI document stay open for probes and scrapers.
PROTECTED_PREFIXES = ("/v1/", "/sdapi/")
_PATH_PARAMETER = re.compile(r"\{(\w+)(:[^}]*)?\}")


def protected_path(path: str) -> bool:
    return any(path.startswith(prefix) or path == prefix.rstrip("/") for prefix in PROTECTED_PREFIXES)


@dataclass(frozen=True)
class Parameter:
    """A query, header or path parameter, for the OpenAPI document."""

    name: str
    location: str  # "query" | "header" | "path" (a path parameter without one: any string)
    description: str
    schema: Mapping[str, object]


@dataclass(frozen=True)
class Route:
    method: str
    path: str  # aiohttp's pattern: {name} or {name:regex}
    handler: Handler
    operation_id: str
    summary: str
    answers: Mapping[int, Answer]
    request: type[BaseModel] | None = None
    request_media_type: str = JSON
    # The error statuses beyond `answers`, described once in openapi.py (with the style's body).
    errors: tuple[int, ...] = ()
    services: tuple[Task, ...] = TASKS
    error_style: ErrorStyle = OPEA
    open: bool = False  # True: no API key even when one is set (capability URLs, OPEA's probe)
    parameters: tuple[Parameter, ...] = ()

    @property
    def protected(self) -> bool:
        return not self.open and protected_path(self.path)

    @property
    def openapi_path(self) -> str:
        return _PATH_PARAMETER.sub(lambda m: "{" + m.group(1) + "}", self.path)

    @property
    def path_parameters(self) -> list[str]:
        return [m.group(1) for m in _PATH_PARAMETER.finditer(self.path)]


_READINESS = {
    200: Answer("The model serves.", Healthy),
    503: Answer("Not serving: loading, failed to load, or draining.", Unhealthy, retry_after=True),
}
# Every route that reads a body may answer these (408: too slow; 503: the body budget is full).
BODY_ERRORS = (400, 408, 413, 415, 503)
GENERATE_ERRORS = (*BODY_ERRORS, 500, 504)
SDAPI = "/sdapi/v1/"
EVENTS = (PartialImageEvent, CompletedEvent, StreamError)


def _sdapi(
    *rows: tuple[str, str, Handler, str, type[BaseModel], type[BaseModel] | None],
) -> tuple[Route, ...]:
    """The /sdapi/v1 routes: text2image only, AUTOMATIC1111's error shape, generations' errors."""
    return tuple(
        Route(
            method,
            SDAPI + name,
            handler,
            "a1111_" + name.replace("-", "_") + ("_set" if method == "POST" and name == "options" else ""),
            "AUTOMATIC1111 API: " + summary,
            {200: Answer(summary + ".", answer)},
            request=request,
            errors=(*GENERATE_ERRORS, 409)
            if name in ("txt2img", "img2img")
            else BODY_ERRORS
            if request
            else (),
            services=("text2image",),
            error_style=A1111,
        )
        for method, name, handler, summary, answer, request in rows
    )


JOB = "/v1/jobs/{job_id}"


def _job_submits() -> tuple[Route, ...]:
    """POST /v1/jobs: each service's own request body."""
    requests = {"text2image": Text2ImageRequest, "image2video": Image2VideoRequest}
    return tuple(
        Route(
            "POST",
            JOBS_PATH,
            jobs_api.submit,
            "submit_job",
            "Submit a job: the synchronous endpoint's body; answers 202 at once, then poll, follow or cancel it",
            {202: Answer("The job, queued (or, for a replayed Idempotency-Key, as it is now).", JobView)},
            request=request,
            errors=(*BODY_ERRORS, 422, 504),
            services=(service,),
            parameters=(
                Parameter(
                    "formats",
                    "query",
                    "Comma-separated result formats per output; default: the first.",
                    {"type": "string", "pattern": f"^({'|'.join(RESULT_FORMATS[service])})(,({'|'.join(RESULT_FORMATS[service])}))*$"},
                ),
                Parameter(
                    "Idempotency-Key",
                    "header",
                    "A retried submit with the same key (and body) returns the same job, never a second one.",
                    {"type": "string", "pattern": "^[!-~]{1,255}$"},
                ),
            ),
        )
        for service, request in requests.items()
    )


STATIC_FILE = Parameter("name", "path", "A file of the page.", {"type": "string", "enum": ui.static_names()})

ROUTES: tuple[Route, ...] = (
    *_job_submits(),
    Route(
        "GET",
        JOBS_PATH,
        jobs_api.list_jobs,
        "list_jobs",
        "The jobs, newest first, a page at a time",
        {200: Answer("A page of jobs.", JobList)},
        errors=(400,),
        parameters=(
            Parameter("limit", "query", "Jobs per page.", {"type": "integer", "minimum": 1, "maximum": jobs_api.MAX_PAGE}),
            Parameter("before", "query", "The `next` of the previous page.", {"type": "string"}),
        ),
    ),
    Route("GET", JOB, jobs_api.get_job, "get_job", "A job's state", {200: Answer("The job.", JobView)}, errors=(404,)),
    Route(
        "GET",
        JOB + "/events",
        jobs_api.events,
        "job_events",
        "Follow a job: server-sent events of its current state, every change and step, ending with the final state",
        {200: Answer("The events; each data is the job.", media_type=EVENT_STREAM, events=(JobView,))},
        errors=(404,),
    ),
    Route(
        "DELETE",
        JOB,
        jobs_api.cancel_job,
        "cancel_job",
        "Cancel a job: a queued one at once, a running one at its next denoising step",
        {
            200: Answer("Cancelled (or it was already).", JobView),
            202: Answer("Running: it stops at its next step (cancel_requested).", JobView),
        },
        errors=(404, 409),
    ),
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
    Route(
        "GET",
        "/v1/health_check",
        handlers.opea_health_check,
        "opea_health_check",
        "OPEA's liveness check: the service's title and version",
        {200: Answer("The process runs.", OpeaHealthCheck)},
        open=True,
    ),
    Route(
        "GET",
        outputs.OUTPUTS_PREFIX + "{name}",
        outputs.output_file,
        "output_file",
        "A file the service made (a clip's MP4, an image asked for as a URL), while it is kept",
        {
            200: Answer("The file.", media_type="application/octet-stream"),
        },
        errors=(404,),
        # Its name holds 128 random bits: the URL itself is the permission, as OpenAI's are.
        open=True,
    ),
    # --- the OpenAI Images API (text2image) ---
    Route(
        "POST",
        "/v1/images/generations",
        openai_api.generations,
        "openai_images_generations",
        "OpenAI Images API: generate images (JSON, or server-sent events with stream: true)",
        {
            200: Answer(
                "The images; with stream, the events.", ImagesResponse, also=(EVENT_STREAM,), events=EVENTS
            )
        },
        request=ImageGenerationRequest,
        errors=GENERATE_ERRORS,
        services=("text2image",),
        error_style=OPENAI,
    ),
    Route(
        "POST",
        "/v1/images/edits",
        openai_edits.edits,
        "openai_images_edits",
        "OpenAI Images API: edit images (image-to-image; inpainting with a mask)",
        {
            200: Answer(
                "The images; with stream, the events.", ImagesResponse, also=(EVENT_STREAM,), events=EVENTS
            )
        },
        request=ImageEditRequest,
        request_media_type=MULTIPART,
        errors=GENERATE_ERRORS,
        services=("text2image",),
        error_style=OPENAI,
    ),
    Route(
        "GET",
        "/v1/models",
        openai_api.list_models,
        "openai_models",
        "OpenAI API: the loaded model",
        {200: Answer("The list of one.", ModelList)},
        services=("text2image",),
        error_style=OPENAI,
    ),
    Route(
        "GET",
        "/v1/models/{model:[\\s\\S]*}",  # a Hub id holds a "/"; empty: a 404 of this route
        openai_api.retrieve_model,
        "openai_model",
        "OpenAI API: one model, by id",
        {200: Answer("The model.", OpenAIModel)},
        errors=(404,),
        services=("text2image",),
        error_style=OPENAI,
    ),
    # --- the AUTOMATIC1111 API subset (text2image) ---
    *_sdapi(
        ("POST", "txt2img", a1111.txt2img, "Generate images", w.GenerationResponse, w.Txt2ImgRequest),
        (
            "POST",
            "img2img",
            a1111.img2img,
            "Image-to-image; inpainting with a mask",
            w.GenerationResponse,
            w.Img2ImgRequest,
        ),
        ("GET", "progress", a1111.progress, "The running job's progress", w.ProgressResponse, None),
        ("POST", "interrupt", a1111.interrupt, "Stop the running job at its next step", w.EmptyObject, None),
        ("GET", "options", a1111.get_options, "Options: the loaded checkpoint", w.Options, None),
        (
            "POST",
            "options",
            a1111.set_options,
            "Set options (only the loaded checkpoint exists)",
            w.Nothing,
            w.OptionsUpdate,
        ),
        ("GET", "sd-models", a1111.sd_models, "The loaded model", w.SdModelList, None),
        ("GET", "samplers", a1111.samplers, "Samplers, by AUTOMATIC1111's names", w.SamplerList, None),
        ("GET", "schedulers", a1111.schedulers, "Schedule types", w.SchedulerList, None),
        ("GET", "upscalers", a1111.empty_list, "None here", w.EmptyList, None),
        ("GET", "latent-upscale-modes", a1111.empty_list, "None here", w.EmptyList, None),
        ("GET", "sd-vae", a1111.empty_list, "None here", w.EmptyList, None),
        ("GET", "sd-modules", a1111.empty_list, "None here", w.EmptyList, None),
        ("GET", "scripts", a1111.scripts, "None here", w.ScriptsList, None),
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
    # --- the web page (docs/ui.md): no API key, as a browser loads it before it has one ---
    Route(
        "GET",
        "/",
        ui.page,
        "ui_page",
        "A web page to try the service: submit jobs, follow them, see and download the results",
        {200: Answer("The page.", media_type=ui.HTML)},
    ),
    Route(
        "GET",
        ui.STATIC_PREFIX + "{name}",
        ui.static_file,
        "ui_static_file",
        "The web page's scripts, style sheet and icon",
        {200: Answer("The file.", media_type=STATIC_TYPES[0], also=STATIC_TYPES[1:])},
        errors=(404,),
        parameters=(STATIC_FILE,),
    ),
)


def routes_for(service: Task) -> list[Route]:
    return [route for route in ROUTES if service in route.services]
