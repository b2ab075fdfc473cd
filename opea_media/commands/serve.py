"""`opea-media serve`: run the OPEA text2image (9379) or image2video (9369) HTTP service."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from pathlib import Path
from typing import Any

import click

from ..config import DEFAULT_MODELS, TASKS, Task, envvar
from ..errors import OpeaMediaError
from ..models.sources import BUILTIN_HELP
from ..models.tuning import Tuning, prepare_threading
from ..server.config import (
    BODY_BUDGET_BODIES,
    DEFAULT_BODY_TIMEOUT,
    DEFAULT_FETCH_TIMEOUT,
    DEFAULT_HOST,
    DEFAULT_JOB_LEASE,
    DEFAULT_KEEPALIVE_TIMEOUT,
    DEFAULT_LOG_LEVEL,
    DEFAULT_MAX_BATCH_SIZE,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_QUEUE,
    DEFAULT_OUTPUT_MAX_BYTES,
    DEFAULT_OUTPUT_RETENTION,
    DEFAULT_REQUEST_TIMEOUT,
    DEFAULT_SHUTDOWN_GRACE,
    INTERRUPTED_JOBS,
    LOG_LEVELS,
    MIB,
    ServerConfig,
)
from ..server.job_runner import MAX_ATTEMPTS
from .model_options import lever_options, placement_options
from .options import EnvCommand

log = logging.getLogger("opea_media.serve")

# The port is taken, the address is not ours, or the output folder is unusable: nothing was served.
EXIT_CANNOT_START = 1


@click.command("serve", cls=EnvCommand)
@click.option(
    "--service",
    type=click.Choice(TASKS),
    default="text2image",
    help="Which OPEA service to run; each container runs one.",
)
@click.option("--host", default=DEFAULT_HOST, help="The address to listen on; 127.0.0.1 keeps it local.")
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=None,
    help="The port to listen on. Default: 9379 for text2image, 9369 for image2video.",
)
@click.option(
    "--model",
    default=None,
    help=f"A Hugging Face Hub id, a local diffusers pipeline folder, {BUILTIN_HELP}. "
    "Default: $OPEA_MEDIA_TEXT2IMAGE_MODEL or "
    "$OPEA_MEDIA_IMAGE2VIDEO_MODEL "
    f"(the variable of the chosen service), else {DEFAULT_MODELS['text2image']} for text2image and "
    f"{DEFAULT_MODELS['image2video']} for image2video.",
)
@placement_options()
@click.option(
    "--max-queue",
    type=click.IntRange(1, 10_000),
    default=DEFAULT_MAX_QUEUE,
    help="Requests that may wait for the model; more get 503 with Retry-After at once.",
)
@click.option(
    "--max-batch-size",
    type=click.IntRange(1, 64),
    default=DEFAULT_MAX_BATCH_SIZE,
    help="text2image: merge up to this many queued requests with equal parameters (all but prompt and "
    "seed) into one pipeline call. More throughput on a GPU, more memory per call.",
)
@click.option(
    "--request-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_REQUEST_TIMEOUT,
    help="Seconds a request may take in all, queueing included; then 504 and its job is dropped or "
    "interrupted.",
)
@click.option(
    "--api-key",
    default=None,
    show_default=False,
    help="Require 'Authorization: Bearer KEY' on /v1/*; /health* and /metrics stay open. Prefer the "
    "environment variable: command lines are visible to every user of the machine.",
)
@click.option(
    "--log-level",
    type=click.Choice(LOG_LEVELS, case_sensitive=False),
    default=DEFAULT_LOG_LEVEL,
    help="Level of the service's own JSON logs; libraries log warnings and worse only.",
)
@click.option(
    "--allow-private-urls",
    is_flag=True,
    help="Let image URLs reach loopback, private and link-local addresses (cloud metadata included). "
    "Only for trusted clients.",
)
@click.option(
    "--allowed-url-hosts",
    default="",
    help="Comma-separated host names that image URLs may use; empty: any public host.",
)
@click.option(
    "--max-body-mib",
    type=click.IntRange(1, 1024),
    default=DEFAULT_MAX_BODY_BYTES // MIB,
    help="Largest request body in MiB; larger ones get 413. Base64 adds a third to an image's size.",
)
@click.option(
    "--max-body-budget-mib",
    type=click.IntRange(1, 64 * 1024),
    default=None,
    help="MiB of request bodies held in memory at once; a request past it gets 503 with Retry-After "
    "before its body is read. A body reserves its Content-Length, or --max-body-mib when the length "
    f"is not known (chunked, compressed). Default: {BODY_BUDGET_BODIES} x --max-body-mib.",
)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BODY_TIMEOUT,
    help="Seconds a request body may take to arrive in full; then 408 and the connection is closed.",
)
@click.option(
    "--keepalive-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_KEEPALIVE_TIMEOUT,
    help="Seconds before a connection idle between requests, or still sending its request headers, "
    "is closed. Keep it above the idle timeout of a load balancer in front.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 1_000_000),
    default=DEFAULT_MAX_CONNECTIONS,
    help="Connections open at once; one more is answered 503 (Retry-After, Connection: close) and "
    "closed before its request is read. Keep it below the process's open-file limit.",
)
@click.option(
    "--shutdown-grace",
    type=click.FloatRange(min=0),
    default=DEFAULT_SHUTDOWN_GRACE,
    help="On SIGTERM/SIGINT, seconds to let requests in progress finish (new ones get 503) before exiting.",
)
@click.option(
    "--fetch-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_FETCH_TIMEOUT,
    help="Seconds to download one image URL, redirects included.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the jobs API's jobs (SQLite), their input images and, by default, the output "
    "files: a volume, so nothing accepted is lost in a restart. Replicas sharing --jobs-store share "
    "this folder too. Default: data/<service> in the opea-media cache.",
)
@click.option(
    "--jobs-store",
    default=None,
    help="Where jobs are kept: sqlite (in --data-dir; one process) or postgresql://user:pass@host/db, "
    "one queue shared by replicas. Prefer the environment variable for a URL with a password.",
)
@click.option(
    "--job-lease",
    type=click.FloatRange(min=1),
    default=DEFAULT_JOB_LEASE,
    help="Seconds a running job's replica holds it without renewing (it renews every third); a "
    "replica that dies loses its job to another after this long.",
)
@click.option(
    "--interrupted-jobs",
    type=click.Choice(INTERRUPTED_JOBS),
    default="rerun",
    help="A job that was running when its service stopped (a crash, kill -9): run it again from the "
    f"start (at most {MAX_ATTEMPTS} times), or fail it with the reason.",
)
@click.option(
    "--output-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the files the service hands out by URL: image2video's MP4s (OPEA's video_path) "
    "and OpenAI response_format=url images, jobs' results. Default: outputs in --data-dir.",
)
@click.option(
    "--output-retention",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_OUTPUT_RETENTION,
    help="Seconds an output file is kept (and its URL works); then it is deleted.",
)
@click.option(
    "--output-max-mib",
    type=click.IntRange(1, 1024 * 1024),
    default=DEFAULT_OUTPUT_MAX_BYTES // MIB,
    help="Disk budget of the output folder in MiB; past it the oldest files are deleted first.",
)
@click.option(
    "--public-url",
    default=None,
    help="The service's address as clients reach it (e.g. behind a proxy), for the URLs it hands "
    "out. Default: the address each request came to.",
)
@click.option(
    "--cors-origins",
    default="",
    help="Comma-separated browser origins allowed to call the API (CORS), e.g. "
    "http://localhost:5173, or '*' for any. Empty: CORS off.",
)
@lever_options()
def serve(
    service: Task,
    host: str,
    port: int | None,
    model: str | None,
    device: str,
    dtype: str,
    allow_pickle_weights: bool,
    max_queue: int,
    max_batch_size: int,
    request_timeout: float,
    api_key: str | None,
    log_level: str,
    allow_private_urls: bool,
    allowed_url_hosts: str,
    max_body_mib: int,
    max_body_budget_mib: int | None,
    body_timeout: float,
    keepalive_timeout: float,
    max_connections: int,
    shutdown_grace: float,
    fetch_timeout: float,
    data_dir: Path | None,
    jobs_store: str | None,
    job_lease: float,
    interrupted_jobs: str,
    output_dir: Path | None,
    output_retention: float,
    output_max_mib: int,
    public_url: str | None,
    cors_origins: str,
    **levers: Any,
) -> None:
    """Run the text2image or image2video HTTP service (JSON logs on stderr).

    The port opens at once and the model loads in the background: /health answers 503 until it is
    ready. SIGTERM stops admitting requests and lets those in progress finish.
    """
    config = ServerConfig(
        service=service,
        host=host,
        port=port,
        # The per-task variable is the one generate-image and animate read too.
        model=model or os.environ.get(envvar(f"{service}_model")) or None,
        device=device,
        dtype=dtype,
        allow_pickle_weights=allow_pickle_weights,
        max_queue=max_queue,
        max_batch_size=max_batch_size,
        request_timeout=request_timeout,
        api_key=api_key or None,  # OPEA_MEDIA_API_KEY= (empty) in a compose file means no key
        log_level=log_level.lower(),
        allow_private_urls=allow_private_urls,
        allowed_url_hosts=_comma_list(allowed_url_hosts),
        max_body_bytes=max_body_mib * MIB,
        max_body_budget_bytes=None if max_body_budget_mib is None else max_body_budget_mib * MIB,
        body_timeout=body_timeout,
        keepalive_timeout=keepalive_timeout,
        max_connections=max_connections,
        shutdown_grace=shutdown_grace,
        fetch_timeout=fetch_timeout,
        tuning=Tuning(**levers),
        data_dir=data_dir,
        jobs_store=jobs_store or None,
        job_lease=job_lease,
        interrupted_jobs=interrupted_jobs,
        output_dir=output_dir,
        output_retention=output_retention,
        output_max_bytes=output_max_mib * MIB,
        public_url=public_url or None,
        cors_origins=_comma_list(cors_origins),
    )
    run(config)


def _comma_list(text: str) -> tuple[str, ...]:
    return tuple(item for item in re.split(r"[,\s]+", text) if item)


def run(config: ServerConfig) -> None:
    """Build the app from `config` and serve it until SIGTERM/SIGINT (exit 0 after draining)."""
    from ..media.store import OutputStore
    from ..server.app import create_app, listening_socket
    from ..server.job_store import open_store, store_kind
    from ..server.logs import configure_logging
    from ..server.serving import serve_forever
    from ..server.shutdown import drain_on_signals

    # Before anything imports torch (the worker thread does, to load the model): OpenMP reads it once.
    prepare_threading(config.tuning.omp_wait_policy)
    configure_logging(config.log_level)
    store = OutputStore(
        config.output_folder, retention=config.output_retention, max_bytes=config.output_max_bytes
    )
    try:
        store.prepare()  # an unwritable folder fails the start, not every image2video request
    except OpeaMediaError as exc:
        log.critical("cannot use the output folder: %s", exc.detail)
        raise click.exceptions.Exit(EXIT_CANNOT_START) from None
    try:
        jobs = open_store(config.jobs_store, config.data_folder)
    except OpeaMediaError as exc:  # the folder is another service's, or the database is unreachable
        log.critical("cannot use the jobs store: %s", exc.detail)
        raise click.exceptions.Exit(EXIT_CANNOT_START) from None
    try:
        sock = listening_socket(config.host, config.bind_port)
    except OSError as exc:
        log.critical("cannot listen on %s:%d: %s", config.host, config.bind_port, exc.strerror or exc)
        jobs.close()
        raise click.exceptions.Exit(EXIT_CANNOT_START) from None
    app = create_app(config, job_store=jobs)
    drain_on_signals(app)
    url = f"http://{config.host}:{config.bind_port}"
    log.info(
        "starting the %s service",
        config.service,
        extra={
            "service": config.service,
            "model": config.model_ref,
            "device": config.device,
            "dtype": config.dtype,
            "max_queue": config.max_queue,
            "max_batch_size": config.max_batch_size,
            "request_timeout": config.request_timeout,
            "body_budget_mib": config.body_budget_bytes / MIB,
            "max_connections": config.max_connections,
            "auth": "api key" if config.api_key else "off",
            "allow_private_urls": config.allow_private_urls,
            "allowed_url_hosts": list(config.allowed_url_hosts),
            "output_dir": str(config.output_folder),
            "data_dir": str(config.data_folder),
            "jobs_store": store_kind(config.jobs_store),
            "cors_origins": list(config.cors_origins),
            "tuning": dataclasses.asdict(config.tuning),
        },
    )
    serve_forever(app, sock, on_listening=lambda: log.info("listening on %s", url, extra={"url": url}))
    log.info("stopped")
