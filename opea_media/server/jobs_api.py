"""The jobs API (both services): submit and come back, follow, cancel.

POST /v1/jobs takes the body of the service's synchronous endpoint and answers 202 at once; the
job is stored (job_store.py) before that answer, so it survives a restart, and any replica of a
shared store answers its GET, events and DELETE. job_runner.py runs it through the one worker queue.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import time
from typing import Any

from aiohttp import web
from PIL import Image

from ..config import JOBS_PATH
from ..errors import Conflict, InvalidInput, NotFound, Unprocessable
from ..media.fetch import UrlPolicy
from ..media.images import encode_png
from ..media.sources import load_images
from ..params import resolve_seed
from .job_runner import RESULT_FORMATS, JobRunner, input_name
from .job_store import CANCELLED, FINAL_STATES, RUNNING, JobRecord, new_job_id
from .jobs_wire import JobList, JobView, job_view
from .keys import ADMISSION, CONFIG, IO_POOL, JOBS, WORKER
from .outputs import output_url
from .running import before_deadline, encoded_response
from .bodies import body_done
from .validation import read_json_body
from .wire import Image2VideoRequest, Text2ImageRequest

IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e]{1,255}")  # printable ASCII, no spaces
DEFAULT_PAGE, MAX_PAGE = 20, 100
# An event stream with nothing to say sends a comment this often: proxies keep it open, and a
# client that left is noticed.
KEEPALIVE_SECONDS = 15.0

log = logging.getLogger(__name__)


def _runner(request: web.Request) -> JobRunner:
    return request.app[JOBS]


def _view(request: web.Request, record: JobRecord, position: int | None = None) -> JobView:
    return job_view(
        record,
        position=position,
        url_of=lambda name: output_url(request, name),
        default_formats=RESULT_FORMATS[record.task][:1],
    )


async def _current_view(request: web.Request, record: JobRecord) -> JobView:
    runner = _runner(request)
    position = await runner.call(runner.store.position, record) if record.state == "queued" else None
    return _view(request, record, position)


def _formats(request: web.Request) -> tuple[str, ...]:
    """?formats=mp4,gif: the result files to write per output; absent: the service's default."""
    allowed = RESULT_FORMATS[request.app[CONFIG].service]
    text = request.query.get("formats")
    if text is None:
        return ()
    asked = tuple(dict.fromkeys(part.strip().lower() for part in text.split(",") if part.strip()))
    unknown = [f for f in asked if f not in allowed]
    if unknown or not asked:
        raise InvalidInput(
            f"formats: {', '.join(unknown) or 'none given'} is not a result format here; choose from "
            f"{', '.join(allowed)} (comma-separated)"
        )
    return asked


def _idempotency_key(request: web.Request) -> str | None:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        return None
    key = key.strip().strip('"')  # the draft standard sends it as a quoted string
    if not IDEMPOTENCY_KEY.fullmatch(key):
        raise InvalidInput("Idempotency-Key: must be 1-255 printable ASCII characters without spaces")
    return key


def _fingerprint(body: dict[str, Any], formats: tuple[str, ...]) -> str:
    text = json.dumps({"body": body, "formats": formats}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _job_response(request: web.Request, view: JobView, *, status: int, replayed: bool = False) -> web.Response:
    headers = {"Location": f"{JOBS_PATH}/{view.id}"}
    if replayed:
        headers["Idempotent-Replayed"] = "true"
    return web.Response(
        text=view.model_dump_json(), status=status, content_type="application/json", headers=headers
    )


async def submit(request: web.Request) -> web.Response:
    """202 with the queued job; the same job again for a replayed Idempotency-Key."""
    app = request.app
    config, worker, runner = app[CONFIG], app[WORKER], _runner(request)
    formats = _formats(request)
    key = _idempotency_key(request)
    with app[ADMISSION].admit():
        # A model still loading takes jobs (they wait); a full queue or a failed model does not.
        runner.queued = await runner.call(runner.store.queued_count, runner.task)  # counted now
        worker.check_admission(while_loading=True)
        deadline = time.monotonic() + config.request_timeout
        model = Text2ImageRequest if config.service == "text2image" else Image2VideoRequest
        job_id = new_job_id()
        async with before_deadline(deadline, config.request_timeout):
            body = await read_json_body(request, model, holds_body=True)
            submitted = body.model_dump(mode="json")
            # Off the event loop: an image2video body holds megabytes of base64.
            fingerprint = await runner.call(_fingerprint, submitted, formats)
            stored = {**submitted, "seed": resolve_seed(body.seed)}
            if isinstance(body, Image2VideoRequest):
                stored = await _store_inputs(request, body, job_id, stored)
            del body, submitted  # the base64 images go before the body's reservation does
            body_done(request)
        record, created = await runner.call(
            runner.store.submit,
            task=config.service,
            request=stored,
            fingerprint=fingerprint,
            formats=formats,
            idempotency_key=key,
            job_id=job_id,
        )
    if not created:
        await runner.call(runner.remove_inputs, stored.get("inputs", ()))  # this submit's own copies
        if record.fingerprint != fingerprint:
            raise Unprocessable(
                "this Idempotency-Key was used before with another request; use a new key for a new job"
            )
        return _job_response(request, await _current_view(request, record), status=202, replayed=True)
    return _job_response(request, await _current_view(request, record), status=202)


async def _store_inputs(
    request: web.Request, body: Image2VideoRequest, job_id: str, stored: dict[str, Any]
) -> dict[str, Any]:
    """Fetch and decode the input images now (their errors are the submit's 400), and keep them
    with the job: a URL may be gone by the time it runs, or runs again."""
    config, runner = request.app[CONFIG], _runner(request)
    sources = body.sources()
    policy = UrlPolicy(allow_private=config.allow_private_urls, allowed_hosts=config.allowed_url_hosts)
    images = await load_images(
        sources,
        fields=[f"images_path[{i}].image_path" for i in range(len(sources))],
        policy=policy,
        fetch_timeout=config.fetch_timeout,
        pool=request.app[IO_POOL],
    )
    names = [input_name(job_id, k) for k in range(len(images))]

    def write(image: Image.Image, name: str) -> None:
        (runner.inputs / name).write_bytes(encode_png(image, compress_level=1))

    await asyncio.gather(*(runner.call(write, image, name) for image, name in zip(images, names, strict=True)))
    stored = {k: v for k, v in stored.items() if k != "images_path"}
    return {**stored, "inputs": names}


async def _record(request: web.Request) -> JobRecord:
    runner = _runner(request)
    job_id = request.match_info["job_id"]
    record = await runner.call(runner.store.get, job_id)
    if record is None or record.task != runner.task:
        raise NotFound(f"no job {job_id[:64]!r}: it never existed here, or it ended long enough ago to be forgotten")
    return record


async def get_job(request: web.Request) -> web.Response:
    view = await _current_view(request, await _record(request))
    return web.Response(text=view.model_dump_json(), content_type="application/json")


async def list_jobs(request: web.Request) -> web.Response:
    runner = _runner(request)
    text = request.query.get("limit", str(DEFAULT_PAGE))
    if not text.isdigit() or not 1 <= int(text) <= MAX_PAGE:
        raise InvalidInput(f"limit: must be a whole number from 1 to {MAX_PAGE}, got {text[:20]!r}")
    limit = int(text)
    records = await runner.call(
        runner.store.page, runner.task, limit=limit + 1, before=request.query.get("before")
    )
    page = records[:limit]
    views = [await _current_view(request, record) for record in page]
    body = JobList(jobs=views, next=page[-1].id if len(records) > limit else None)
    return await encoded_response(request.app[IO_POOL], body)


async def cancel_job(request: web.Request) -> web.Response:
    """Queued: cancelled now (200). Running: stops at its next step (202, cancel_requested).
    Ended: 409, it stays as it ended."""
    runner = _runner(request)
    record = await _record(request)
    if record.state in FINAL_STATES and record.state != CANCELLED:
        raise Conflict(f"the job already {record.state}; there is nothing to cancel")
    record = await runner.call(runner.store.cancel, record.id) or record
    status = 202 if record.state == RUNNING else 200
    return _job_response(request, await _current_view(request, record), status=status)


def _event(view: JobView, name: str) -> bytes:
    return f"event: {name}\nid: {view.id}\ndata: {view.model_dump_json()}\n\n".encode()


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events: the current state first, then every change (each denoising step is a
    `progress` event, each new state an event named after it), ending after the final state."""
    runner = _runner(request)
    job_id = request.match_info["job_id"]
    with runner.follow(job_id) as changes:
        record = await _record(request)  # subscribed first: no change between is missed
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        try:
            await _stream(request, response, record, changes)
        except ConnectionResetError:  # the follower went away (Ctrl-C, a closed tab): the job goes on
            log.debug("the follower of job %s went away", job_id)
    return response


async def _stream(
    request: web.Request, response: web.StreamResponse, record: JobRecord, changes: asyncio.Queue[JobRecord]
) -> None:
    """The events of one job, from `record` on, until its final state."""
    runner = _runner(request)
    last = record
    await response.write(_event(await _current_view(request, record), record.state))
    while not last.final:
        try:
            record = await asyncio.wait_for(changes.get(), KEEPALIVE_SECONDS)
        except TimeoutError:
            # Also the safety net for a missed notification: read the job again.
            record = await runner.call(runner.store.get, record.id) or last
            if record.version <= last.version:
                await response.write(b": keep-alive\n\n")
                continue
        if record.version <= last.version:
            continue
        name = "progress" if record.state == last.state == RUNNING else record.state
        position = None
        if record.state == "queued":
            position = await runner.call(runner.store.position, record)
        await response.write(_event(_view(request, record, position), name))
        last = record
    await response.write_eof()
