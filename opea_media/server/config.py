"""The service's settings, built once by the `serve` command (or a test) and never changed."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..config import (
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_MODELS,
    DEFAULT_PORTS,
    DEVICES,
    DTYPES,
    TASKS,
    Task,
    cache_root,
)
from ..errors import InvalidInput
from ..models.tuning import Tuning
from .job_store import store_kind

MIB = 1024 * 1024
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

DEFAULT_HOST = "0.0.0.0"
DEFAULT_MAX_QUEUE = 16
DEFAULT_MAX_BATCH_SIZE = 1  # the spec's "one request at a time"; batching is opt-in
DEFAULT_REQUEST_TIMEOUT = 300.0
# Several base64 images fit; aiohttp's own default (1 MiB) would refuse one photo.
DEFAULT_MAX_BODY_BYTES = 32 * MIB
DEFAULT_SHUTDOWN_GRACE = 30.0
DEFAULT_LOG_LEVEL = "debug"  # the spec's default for the project's own loggers
# What the bodies being received at once may hold in memory, by default: this many bodies at the
# size limit (docs/reliability.md measured what a flood of them costs).
BODY_BUDGET_BODIES = 4
# Seconds a request body may take to arrive in full; then 408 and the connection is closed.
DEFAULT_BODY_TIMEOUT = 30.0
# Seconds before a connection that is idle between requests, or has not finished sending its
# request headers (a slow-headers client), is closed. Longer than the idle timeouts of the load
# balancers in front (60 s for most), so that they, not the service, close idle connections.
DEFAULT_KEEPALIVE_TIMEOUT = 75.0
# Connections open at once; more are answered 503 and closed (server/serving.py).
DEFAULT_MAX_CONNECTIONS = 512
# The output folder (clips for OPEA's video_path, images for response_format=url): files live an
# hour, and the oldest go first once the folder holds more than the budget.
DEFAULT_OUTPUT_RETENTION = 3600.0
DEFAULT_OUTPUT_MAX_BYTES = 2048 * MIB
# The jobs API: a running job's lease (renewed every third of it; a replica that dies mid-job
# loses its job to another after at most this long), and what happens to a job that was running
# when its service stopped.
DEFAULT_JOB_LEASE = 30.0
INTERRUPTED_JOBS = ("rerun", "fail")


@dataclass(frozen=True)
class ServerConfig:
    """Everything one service process needs to know; invalid combinations raise InvalidInput."""

    service: Task = "text2image"
    host: str = DEFAULT_HOST
    port: int | None = None  # None: the service's OPEA port (9379 / 9369)
    model: str | None = None  # None: the service's default model
    device: str = "auto"
    dtype: str = "auto"
    cache_dir: Path | None = None  # None: OPEA_MEDIA_CACHE or ~/.cache/opea-media
    allow_pickle_weights: bool = False  # load .bin (pickle) weights too: runs the code inside them
    max_queue: int = DEFAULT_MAX_QUEUE
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    request_timeout: float = DEFAULT_REQUEST_TIMEOUT
    api_key: str | None = None
    log_level: str = DEFAULT_LOG_LEVEL
    allow_private_urls: bool = False
    allowed_url_hosts: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_body_budget_bytes: int | None = None  # None: BODY_BUDGET_BODIES x max_body_bytes
    body_timeout: float = DEFAULT_BODY_TIMEOUT
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    fetch_timeout: float = DEFAULT_FETCH_TIMEOUT
    io_threads: int = 4  # image decoding and PNG encoding, off the event loop
    tuning: Tuning = Tuning()  # the memory/speed levers (models/tuning.py)
    # The jobs (jobs.sqlite3), their inputs and, unless output_dir says otherwise, the output files.
    data_dir: Path | None = None  # None: <cache>/data/<service>
    jobs_store: str | None = None  # None: SQLite under data_dir; or postgresql://... (replicas)
    job_lease: float = DEFAULT_JOB_LEASE
    interrupted_jobs: str = "rerun"
    output_dir: Path | None = None  # None: <data_dir>/outputs
    output_retention: float = DEFAULT_OUTPUT_RETENTION
    output_max_bytes: int = DEFAULT_OUTPUT_MAX_BYTES
    # The service's address as clients reach it (a proxy's), for the URLs it hands out; None:
    # the address each request came to.
    public_url: str | None = None
    cors_origins: tuple[str, ...] = ()  # empty: no CORS headers; "*": any origin

    def __post_init__(self) -> None:
        self._check_body_and_connection_limits()
        if self.service not in TASKS:
            raise InvalidInput(f"unknown service {self.service!r}; choose one of {', '.join(TASKS)}")
        if self.device not in DEVICES:
            raise InvalidInput(f"unknown device {self.device!r}; choose one of {', '.join(DEVICES)}")
        if self.dtype not in DTYPES:
            raise InvalidInput(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPES)}")
        if self.log_level not in LOG_LEVELS:
            raise InvalidInput(f"unknown log level {self.log_level!r}; choose one of {', '.join(LOG_LEVELS)}")
        if self.port is not None and not 0 <= self.port <= 65535:
            raise InvalidInput(f"port must be between 0 and 65535, got {self.port}")
        for name in ("max_queue", "max_batch_size", "max_body_bytes", "io_threads", "output_max_bytes"):
            if getattr(self, name) < 1:
                raise InvalidInput(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.interrupted_jobs not in INTERRUPTED_JOBS:
            raise InvalidInput(
                f"interrupted_jobs must be one of {', '.join(INTERRUPTED_JOBS)}, got {self.interrupted_jobs!r}"
            )
        store_kind(self.jobs_store)  # refuses anything but sqlite and postgresql:// URLs
        for name in ("request_timeout", "fetch_timeout", "output_retention", "job_lease"):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"{name} must be more than 0 seconds, got {getattr(self, name)}")
        if self.shutdown_grace < 0:
            raise InvalidInput(f"shutdown_grace must not be negative, got {self.shutdown_grace}")
        if self.api_key is not None and not self.api_key.strip():
            raise InvalidInput("api_key must not be blank; leave it unset to turn authentication off")
        if self.public_url is not None and not re.fullmatch(
            r"https?://[^/?#\s]+(/[^?#\s]*)?", self.public_url
        ):
            raise InvalidInput(
                "public_url must be an http(s) URL such as https://images.example.com, "
                f"got {self.public_url!r}"
            )
        for origin in self.cors_origins:
            if origin != "*" and not re.fullmatch(r"https?://[^/?#\s]+", origin):
                raise InvalidInput(
                    f"a CORS origin is '*' or scheme://host[:port] without a path, got {origin!r}"
                )

    def _check_body_and_connection_limits(self) -> None:
        for name in ("body_timeout", "keepalive_timeout"):
            if not getattr(self, name) > 0:
                raise InvalidInput(f"{name} must be more than 0 seconds, got {getattr(self, name)}")
        if self.max_connections < 1:
            raise InvalidInput(f"max_connections must be at least 1, got {self.max_connections}")
        if self.body_budget_bytes < self.max_body_bytes:
            raise InvalidInput(
                f"the body budget ({self.body_budget_bytes / MIB:g} MiB) must hold at least one body "
                f"at the size limit ({self.max_body_bytes / MIB:g} MiB)"
            )

    @property
    def body_budget_bytes(self) -> int:
        """What the request bodies being received at once may hold in memory."""
        if self.max_body_budget_bytes is None:
            return BODY_BUDGET_BODIES * self.max_body_bytes
        return self.max_body_budget_bytes

    @property
    def bind_port(self) -> int:
        return DEFAULT_PORTS[self.service] if self.port is None else self.port

    @property
    def model_ref(self) -> str:
        return self.model or DEFAULT_MODELS[self.service]

    @property
    def data_folder(self) -> Path:
        return self.data_dir or cache_root() / "data" / self.service

    @property
    def output_folder(self) -> Path:
        return self.output_dir or self.data_folder / "outputs"
