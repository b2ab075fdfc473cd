"""The model's worker thread and its bounded FIFO queue.

A diffusers pipeline keeps per-call scheduler state, so exactly one thread ever calls it. The
thread loads the model first (the port is already open), then drains the queue, merging
compatible text2image jobs into one pipeline call.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..errors import (
    Cancelled,
    DeadlineExceeded,
    ModelFailure,
    ModelLoading,
    ModelUnavailable,
    OpeaMediaError,
    OutOfMemory,
    QueueFull,
    ShuttingDown,
    is_out_of_memory,
)
from ..models.handle import ModelHandle, ModelState
from .jobs import DEADLINE, INTERRUPTED, RUNNERS, SHUTDOWN, Job, Progress, Status
from .metrics import Metrics
from .outcomes import Outcomes

log = logging.getLogger(__name__)

LOADING_RETRY_AFTER = 10  # seconds: a model loads in seconds (cached) to minutes (downloading)
_MAX_RETRY_AFTER = 600

_heap_frozen = threading.Event()


def _freeze_heap_once() -> None:
    """After the process's first model load: what lives then (modules, the pipeline's tensors)
    lives as long as the process, so it leaves the garbage collector's view. Unfrozen, a full
    collection walked it in 0.2-0.3 s with the GIL held, a stall of every request
    (docs/reliability.md). Once: `serve` loads one model; a test process loads many."""
    if not _heap_frozen.is_set():
        _heap_frozen.set()
        gc.collect()
        gc.freeze()


class InferenceWorker:
    """Runs the model's handle and its queue; the event loop only submits and cancels jobs."""

    def __init__(
        self, *, handle: ModelHandle[Any], max_queue: int, max_batch_size: int, metrics: Metrics
    ) -> None:
        self.handle = handle
        self.task = handle.task
        self._max_queue = max_queue
        self._max_batch_size = max_batch_size if handle.task == "text2image" else 1
        self._metrics = metrics
        self._outcomes = Outcomes(metrics, handle.task)
        self._run_batch = RUNNERS[handle.task]
        self._queue: deque[Job] = deque()
        self._running: list[Job] = []  # inside the pipeline call now
        self._batch: list[Job] = []  # taken from the queue and not yet answered
        self._cond = threading.Condition()
        self._stopping = False
        self._abort = False  # set when the grace period is over: interrupt the running batch
        self._seconds_per_job: float | None = None  # moving average, for Retry-After
        # Jobs waiting elsewhere for this worker (the jobs API's store): they count against the
        # same bound as the requests in its own queue.
        self.backlog: Callable[[], int] = lambda: 0
        # The running call's step, written by the worker thread and read by /sdapi/v1/progress:
        # one attribute store, replaced whole.
        self.progress: Progress | None = None
        # Set once if the thread ever ends by surprise: the service then stays up but refuses work.
        self.failure: str | None = None
        self._thread = threading.Thread(target=self._main, name=f"opea-media-{self.task}-worker", daemon=True)

    # --- called from the event loop -------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def status(self) -> Status:
        """The model's state as health checks report it; "failed" too once the worker thread died."""
        if self.failure is not None:
            return Status("failed", self.failure)
        state = self.handle.state
        # Not loaded yet: the thread is about to start loading it.
        return Status("loading" if state is ModelState.NOT_LOADED else state.value, self.handle.detail)

    @property
    def ready(self) -> bool:
        return self.failure is None and self.handle.state is ModelState.READY

    @property
    def model(self) -> Any:
        """The loaded model; ModelUnavailable before that."""
        return self.handle.get()

    @property
    def alive(self) -> bool:
        """False once the worker thread died: nothing will ever run here again."""
        return self.failure is None

    def check_admission(self, *, while_loading: bool = False) -> None:
        """Raise the 503 a new request should get now, before any work is spent on it.

        `while_loading`: a stored job may wait for the model to load; a request would time out.
        """
        status = self.status
        if status.state == "loading" and not while_loading:
            raise ModelLoading(f"{status.detail}; retry shortly", retry_after=LOADING_RETRY_AFTER)
        if status.state == "failed":
            raise ModelUnavailable(status.detail)  # no Retry-After: retrying will not help
        if self._stopping:
            raise ShuttingDown()
        if len(self._queue) + self.backlog() >= self._max_queue:
            raise QueueFull(
                f"the queue is full ({self._max_queue} jobs waiting); retry later",
                retry_after=self.retry_after(),
            )

    def submit(self, job: Job, *, bounded: bool = True) -> None:
        """Admit a job, or raise the 503 that says why not (the queue is full, shutting down).

        `bounded` False: a job the jobs API admitted already (it counted against the bound then).
        """
        with self._cond:
            if bounded:
                self.check_admission()
            elif self._stopping:
                raise ShuttingDown()
            self._queue.append(job)
            self._metrics.queue_depth.set(len(self._queue))
            self._cond.notify()

    def cancel(self, job: Job, reason: str) -> None:
        """The handler gave up on a job: drop it if queued, else the running batch notices it."""
        job.cancel_reason = reason
        with self._cond:
            try:
                self._queue.remove(job)
            except ValueError:
                return  # running (interrupted at the next step) or already finished
            self._metrics.queue_depth.set(len(self._queue))
        self._outcomes.log_cancelled(job, "dropped from the queue")

    def interrupt(self) -> int:
        """Stop the running batch at its next step; its clients get 409. Returns how many jobs."""
        with self._cond:
            running = list(self._running)
        for job in running:
            job.cancel_reason = job.cancel_reason or INTERRUPTED
        return len(running)

    @property
    def interrupted(self) -> bool:
        """Whether the running batch was told to stop (it does at its next step)."""
        return any(job.cancel_reason == INTERRUPTED for job in list(self._running))

    def retry_after(self) -> int:
        """Seconds until a queue slot is likely free; a hint for clients, not a promise."""
        per_job = self._seconds_per_job or 5.0
        waiting = (len(self._queue) + 1) / self._max_batch_size
        return max(1, min(_MAX_RETRY_AFTER, math.ceil(per_job * waiting)))

    def abort(self) -> None:
        """Refuse new jobs, answer queued ones with 503 and interrupt the running batch at its next step."""
        with self._cond:
            self._stopping = True
            self._abort = True
            dropped = list(self._queue)
            self._queue.clear()
            self._metrics.queue_depth.set(0)
            self._cond.notify_all()
        for job in dropped:
            self._outcomes.give_up(
                job, SHUTDOWN, ShuttingDown("the service shut down before this request ran")
            )

    def stop(self, timeout: float) -> None:
        """abort(), then wait up to `timeout` seconds for the thread to end."""
        self.abort()
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                log.warning("the worker did not stop within %.1f s; leaving it behind", timeout)

    # --- the worker thread ------------------------------------------------------------------------

    def _main(self) -> None:
        try:
            try:
                model = self.handle.load()
            except OpeaMediaError:
                return  # the handle keeps the reason; health checks and every 503 report it
            _freeze_heap_once()
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._batch = batch
                self._execute(model, batch)
                self._batch = []
        except BaseException as exc:  # noqa: B036 (the thread is ending: say so, then let it end)
            self._died(exc)

    def _died(self, exc: BaseException) -> None:
        """The thread is ending by surprise: fail every waiting job and report it, never hang silently."""
        what = "serving" if self.handle.state is ModelState.READY else "loading the model"
        self.failure = (
            f"the inference worker stopped unexpectedly while {what} ({type(exc).__name__}); "
            "restart the service (the log has the details)"
        )
        log.critical("the inference worker died", exc_info=exc, extra={"task": self.task})
        with self._cond:
            self._stopping = True
            running, queued = list(self._batch), list(self._queue)
            self._running = []
            self._queue.clear()
        self._metrics.queue_depth.set(0)
        self._metrics.inference_in_progress.set(0)
        for job in running:  # a job answered already keeps its answer: settling twice is a no-op
            job.settle(error=ModelFailure(f"{self.failure}; this request was running"))
        for job in queued:
            job.settle(error=ModelUnavailable(self.failure))

    def _next_batch(self) -> list[Job] | None:
        """The oldest job plus queued jobs that can share its pipeline call; None once stopping."""
        expired: list[Job] = []
        with self._cond:
            while True:
                now = time.monotonic()
                while self._queue and self._queue[0].expired(now):
                    expired.append(self._queue.popleft())
                # Stopping with an empty queue ends the thread: nothing new is admitted by then.
                if self._queue or self._stopping:
                    break
                self._cond.wait()
            if not self._queue:
                batch = None
            else:
                head = self._queue.popleft()
                batch = [head]
                key = head.batch_key()
                if key is not None and self._max_batch_size > 1:
                    # Later compatible jobs join the head; the head itself is never overtaken.
                    for job in list(self._queue):
                        if len(batch) == self._max_batch_size:
                            break
                        if job.batch_key() == key and not job.expired(now):
                            self._queue.remove(job)
                            batch.append(job)
                self._running = batch
            self._metrics.queue_depth.set(len(self._queue))
        for job in expired:
            self._outcomes.give_up(
                job, DEADLINE, DeadlineExceeded("the request timed out while waiting in the queue")
            )
        return batch

    def _execute(self, model: Any, batch: list[Job]) -> None:
        started = time.monotonic()
        for job in batch:
            job.started_at = started
            self._metrics.queue_wait_seconds.observe(started - job.enqueued_at)
        self._metrics.batch_size.observe(len(batch))
        self._metrics.inference_in_progress.set(len(batch))
        if len(batch) > 1:
            log.debug(
                "running a batch of %d jobs", len(batch), extra={"request_ids": [j.request_id for j in batch]}
            )

        self.progress = Progress(0, 0, started, len(batch))

        def on_step(step: int, total: int) -> None:
            self.progress = Progress(step, total, started, len(batch))
            for job in batch:
                if job.on_step is not None:
                    job.on_step(step, total)
            if self._abort:
                raise Cancelled("the service is shutting down")
            now = time.monotonic()
            if all(job.abandoned(now) for job in batch):
                raise Cancelled("no client is waiting for this batch any more")

        results: list[Any] | None = None
        error: OpeaMediaError | None = None
        try:
            out = self._run_batch(model, batch, on_step)
            if len(out) != len(batch):
                raise ModelFailure(f"the model returned {len(out)} results for {len(batch)} requests")
            results = out
        except Cancelled:
            pass  # every job is settled below by why it was abandoned
        except OpeaMediaError as exc:
            error = exc
        except BaseException as exc:  # noqa: B036
            # SystemExit or KeyboardInterrupt from a library (signals never reach this thread) fails
            # this batch like any error; the thread goes on serving.
            log.exception("inference failed", extra={"request_ids": [j.request_id for j in batch]})
            if is_out_of_memory(exc):
                error = OutOfMemory()
            else:
                error = ModelFailure(
                    f"inference failed unexpectedly ({type(exc).__name__}); see the service log"
                )
        finally:
            seconds = time.monotonic() - started
            self._metrics.inference_seconds.observe(seconds)
            self._metrics.inference_in_progress.set(0)
            self.progress = None
            with self._cond:
                self._running = []
            if results is not None:
                per_job = seconds / len(batch) * self._max_batch_size
                previous = self._seconds_per_job
                self._seconds_per_job = per_job if previous is None else 0.7 * previous + 0.3 * per_job
        for index, job in enumerate(batch):
            if results is not None:
                self._outcomes.deliver(job, result=results[index])
            elif error is not None:
                self._outcomes.deliver(job, error=error)
            else:
                self._outcomes.interrupted(job)
