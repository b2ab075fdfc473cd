"""The jobs API's engine in each process: takes stored jobs into the one worker queue, records
their progress step by step, keeps their leases, writes their result files, ends them once; and
fans every change of the store out to the event streams that follow a job.

A stored job is taken only while the worker is idle, so replicas sharing a PostgreSQL queue split
the jobs between them and a job reads "running" only while it runs. Its lease is renewed at each
step and every `lease / 3` seconds; a job whose lease ran out (its replica died) is queued again
from the start by whichever replica notices first, or failed, by `--interrupted-jobs`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import os
import socket
import secrets
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any

from aiohttp import web
from PIL import Image

from ..errors import Cancelled, Interrupted, OpeaMediaError, ShuttingDown
from ..media.images import encode_image, encode_png, fit_image
from ..media.store import OutputStore
from ..media.video import write_video
from ..metadata import text2image_metadata
from ..params import per_output
from .job_store import CANCELLED, FAILED, QUEUED, RUNNING, SUCCEEDED, JobRecord, SqlJobStore, open_store
from .jobs import JOB_CANCELLED, LEASE_LOST, Job, VideoRequest
from .keys import ADMISSION, CONFIG, IO_POOL, JOBS, METRICS, OUTPUTS, WORKER
from .running import outputs_made
from .wire import Image2VideoRequest, Text2ImageRequest

log = logging.getLogger(__name__)

# Without a change to wake it, the runner still looks for work this often (another replica's
# submit reaches PostgreSQL's listeners at once; this is the fallback) and renews leases.
POLL_SECONDS = 0.5
MAX_ATTEMPTS = 3  # a job whose replica died this many times is failed, not run again
PRUNE_INTERVAL = 60.0
RELEASE_TIMEOUT = 30.0  # at shutdown: for interrupted jobs to go back to the queue

# What each service writes per output; the first is the default.
RESULT_FORMATS = {
    "text2image": ("png", "webp"),
    "image2video": ("mp4", "gif", "webp"),
}
CONTENT_TYPES = {"png": "image/png", "webp": "image/webp", "mp4": "video/mp4", "gif": "image/gif"}


def input_name(job_id: str, index: int) -> str:
    return f"{job_id}-{index}.png"


class JobRunner:
    """One per app: the store, the inputs folder, the claim loop and the event fan-out."""

    def __init__(self, app: web.Application, store: SqlJobStore, inputs: Path) -> None:
        self.app = app
        self.store = store
        self.inputs = inputs
        self.task = app[CONFIG].service
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self.queued = 0  # the store's queued jobs of this service, as last counted
        self._running: dict[str, Job | None] = {}  # taken by this process (None: not queued yet)
        self._subscribers: dict[str, set[asyncio.Queue[JobRecord]]] = defaultdict(set)
        self._wake = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        self._loops: list[asyncio.Task[Any]] = []  # claiming, leases, pruning
        self._jobs: set[asyncio.Task[Any]] = set()  # one per job taken
        store.listen(self._changed_anywhere)
        app[WORKER].backlog = lambda: self.queued  # one bound for stored jobs and requests

    # --- the store's changes, from any thread (and, with PostgreSQL, any replica) ---------------

    def _changed_anywhere(self, record: JobRecord) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nobody listens any more
            self._loop.call_soon_threadsafe(self._changed, record)

    def _changed(self, record: JobRecord) -> None:
        if record.task != self.task:
            return
        if record.state == QUEUED:
            self._wake.set()
        job = self._running.get(record.id)
        if job is not None and record.cancel_requested:
            self.app[WORKER].cancel(job, JOB_CANCELLED)
        for queue in list(self._subscribers.get(record.id, ())):
            queue.put_nowait(record)

    @contextlib.contextmanager
    def follow(self, job_id: str) -> Any:
        """A queue of the job's changes from now on (subscribe before reading its current state)."""
        queue: asyncio.Queue[JobRecord] = asyncio.Queue()
        self._subscribers[job_id].add(queue)
        try:
            yield queue
        finally:
            self._subscribers[job_id].discard(queue)
            if not self._subscribers[job_id]:
                del self._subscribers[job_id]

    async def call(self, function: Any, *args: Any, **kwargs: Any) -> Any:
        """A store call in the I/O threads."""
        return await self._loop.run_in_executor(self.app[IO_POOL], functools.partial(function, *args, **kwargs))

    # --- lifecycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        config = self.app[CONFIG]
        # One process owns a SQLite store: every job it finds running was this service's
        # before it stopped. Replicas of a shared store wait for the lease instead.
        expired = time.time() if self.store.shared else math.inf
        await self._recover(expired)
        for coroutine in (self._claim_forever(), self._keep_leases(config.job_lease), self._prune_forever()):
            self._loops.append(asyncio.create_task(coroutine))

    async def stop(self) -> None:
        """Take no more jobs; the worker's stop interrupts those running, which go back to the queue."""
        for task in self._loops:
            task.cancel()
        self.app[WORKER].abort()
        if self._jobs:
            await asyncio.wait(set(self._jobs), timeout=RELEASE_TIMEOUT)
        await self._loop.run_in_executor(None, self.store.close)

    async def _recover(self, expired_before: float) -> None:
        config = self.app[CONFIG]
        changed = await self.call(
            self.store.recover,
            self.task,
            expired_before=expired_before,
            rerun=config.interrupted_jobs == "rerun",
            max_attempts=MAX_ATTEMPTS,
        )
        for record in changed:
            log.warning(
                "job %s was running when its service stopped: now %s",
                record.id,
                record.state,
                extra={"job_id": record.id, "state": record.state},
            )
            if record.final:
                await self.call(self.remove_inputs, record.request.get("inputs", ()))

    # --- taking jobs ----------------------------------------------------------------------------

    def _idle(self) -> bool:
        worker = self.app[WORKER]
        return worker.ready and worker.queue_depth == 0 and worker.running == 0 and not self._running

    async def _claim_forever(self) -> None:
        lease = self.app[CONFIG].job_lease
        while True:
            self.queued = await self.call(self.store.queued_count, self.task)
            self.app[METRICS].stored_jobs_queued.set(self.queued)
            if self._idle() and not self.app[ADMISSION].draining and self.queued:
                record = await self.call(self.store.claim, self.task, self.owner, lease)
                if record is not None:
                    self._running[record.id] = None  # taken: the next round waits for it
                    task = asyncio.create_task(self._run(record))
                    self._jobs.add(task)
                    task.add_done_callback(self._jobs.discard)
                    continue
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_SECONDS)

    async def _run(self, record: JobRecord) -> None:
        log.info(
            "job started (attempt %d)", record.attempts, extra={"job_id": record.id, "attempt": record.attempts}
        )
        try:
            with self.app[ADMISSION].admit():  # a drain waits for it within the grace period
                payload = await self.call(self._payload, record)
                job = Job(
                    request_id=record.id,
                    payload=payload,
                    deadline=math.inf,  # a stored job waits as long as it must; DELETE cancels it
                    loop=self._loop,
                    on_step=functools.partial(self._stepped, record),
                )
                self._running[record.id] = job
                self.app[WORKER].submit(job, bounded=False)
                result = await job.future
                outcome = await self.call(self._write_results, record, job, result)
            await self._finish(record, SUCCEEDED, result=outcome)
        except ShuttingDown:
            await self.call(self.store.release, record.id, self.owner)
            log.info("job put back in the queue: the service is stopping", extra={"job_id": record.id})
        except (Cancelled, Interrupted):
            await self._finish(record, CANCELLED)
        except OpeaMediaError as exc:
            await self._finish(record, FAILED, error={"status_code": exc.http_status, "detail": exc.detail})
        except Exception as exc:
            log.exception("job failed unexpectedly", extra={"job_id": record.id})
            detail = f"the job failed unexpectedly ({type(exc).__name__}); see the service log"
            await self._finish(record, FAILED, error={"status_code": 500, "detail": detail})
        finally:
            self._running.pop(record.id, None)
            self._wake.set()

    async def _finish(self, record: JobRecord, state: str, **outcome: Any) -> None:
        ended = await self.call(self.store.finish, record.id, self.owner, state, **outcome)
        if ended is None:
            log.warning(
                "job outcome dropped: its lease ran out and another replica took it",
                extra={"job_id": record.id, "state": state},
            )
            return
        await self.call(self.remove_inputs, ended.request.get("inputs", ()))
        self.app[METRICS].stored_jobs_finished.labels(state).inc()
        log.info("job %s", state, extra={"job_id": record.id, "state": state})

    def _stepped(self, record: JobRecord, step: int, total: int) -> None:
        """The worker thread, after each denoising step: record it (every event stream sees it),
        extend the lease, and stop at this step if the job was cancelled or taken by another."""
        job = self._running.get(record.id)
        phase = "decoding" if step >= total else "denoising"
        try:
            now = self.store.step(record.id, self.owner, step, total, phase, self.app[CONFIG].job_lease)
        except Exception:  # the store is unreachable for a moment: the job goes on, its lease too
            log.warning("could not record a job's progress", exc_info=True, extra={"job_id": record.id})
            return
        if job is None:
            return
        if now is None:
            job.cancel_reason = LEASE_LOST
        elif now.cancel_requested:
            job.cancel_reason = JOB_CANCELLED

    # --- a job's inputs and results (the I/O threads) ---------------------------------------------

    def _payload(self, record: JobRecord) -> Any:
        """What the worker runs, rebuilt from the stored request alone (also after a restart)."""
        model = self.app[WORKER].model
        if self.task == "text2image":
            return model.complete(Text2ImageRequest.model_validate(record.request).params())
        request = dict(record.request)
        names = request.pop("inputs")
        # The images are the stored files, not sources to fetch: the wire model still wants an entry
        # per image, and its params are all that is taken from it.
        params = Image2VideoRequest.model_validate(
            {**request, "images_path": [{"image_path": "stored"} for _ in names]}
        ).params()
        clips = per_output(model.complete(params), len(names))
        images = []
        for name, own in zip(names, clips, strict=True):
            with Image.open(self.inputs / name) as stored:
                images.append(fit_image(stored.convert("RGB"), own.width, own.height))
        return VideoRequest(tuple(images), tuple(clips))

    def _write_results(self, record: JobRecord, job: Job, result: Any) -> dict[str, Any]:
        outputs: OutputStore = self.app[OUTPUTS]
        model = self.app[WORKER].handle.ref
        formats = record.formats or RESULT_FORMATS[self.task][:1]
        files: list[dict[str, Any]] = []
        if self.task == "text2image":
            params = job.payload
            own = per_output(params, len(result))
            for k, (image, p) in enumerate(zip(result, own, strict=True)):
                for fmt in formats:
                    data = (
                        encode_png(image, metadata=text2image_metadata(p, model=model))
                        if fmt == "png"
                        else encode_image(image, fmt, quality=90)
                    )
                    name = outputs.write_bytes(data, prefix=f"{record.id}-{k}", suffix="." + fmt)
                    files.append(_file(name, fmt, k, p.seed))
        else:
            own = list(job.payload.params)
            for k, (clip, p) in enumerate(zip(result, own, strict=True)):
                for fmt in formats:
                    suffix = "-generated.mp4" if fmt == "mp4" else "." + fmt
                    writer = functools.partial(write_video, clip, fps=p.fps)
                    name = outputs.write_with(writer, prefix=f"{record.id}-{k}", suffix=suffix)
                    files.append(_file(name, fmt, k, p.seed))
        return {"files": files, **outputs_made(job, own, model)}

    def remove_inputs(self, names: Iterable[str]) -> None:
        """Input files are needed until their job ends (a restart runs it again from them)."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                (self.inputs / name).unlink()

    # --- upkeep ---------------------------------------------------------------------------------

    async def _keep_leases(self, lease: float) -> None:
        while True:
            await asyncio.sleep(lease / 3)
            mine = list(self._running)
            try:
                kept = await self.call(self.store.renew, self.owner, mine, lease)
                for job_id in set(mine) - kept:
                    job = self._running.get(job_id)
                    if job is not None:
                        log.warning("lost a job's lease; stopping it", extra={"job_id": job_id})
                        self.app[WORKER].cancel(job, LEASE_LOST)
                await self._recover(time.time())
            except Exception:  # a store outage: try again at the next round
                log.warning("could not renew the jobs' leases", exc_info=True)

    async def _prune_forever(self) -> None:
        retention = self.app[CONFIG].output_retention
        while True:
            try:
                removed = await self.call(self.store.prune, self.task, finished_before=time.time() - retention)
                for record in removed:
                    await self.call(self.remove_inputs, record.request.get("inputs", ()))
            except Exception:
                log.warning("could not prune old jobs", exc_info=True)
            await asyncio.sleep(min(PRUNE_INTERVAL, retention / 2))


def _file(name: str, fmt: str, output: int, seed: int | None) -> dict[str, Any]:
    return {"name": name, "format": fmt, "content_type": CONTENT_TYPES[fmt], "output": output, "seed": seed}


async def jobs_context(app: web.Application, *, store: SqlJobStore | None) -> AsyncIterator[None]:
    """cleanup_ctx (after the worker's, so cleaned up before it: no job is taken while the worker
    stops): open the store unless given, recover, run."""
    config = app[CONFIG]
    if store is None:
        store = await asyncio.get_running_loop().run_in_executor(
            None, open_store, config.jobs_store, config.data_folder
        )
    inputs = config.data_folder / "inputs"
    inputs.mkdir(parents=True, exist_ok=True)
    runner = JobRunner(app, store, inputs)
    app[JOBS] = runner
    await runner.start()
    yield
    await runner.stop()

