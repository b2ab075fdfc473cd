"""How an admitted job ends when its result does not simply reach its client: each way settled,
logged and counted (opea_media_jobs_cancelled) in one place."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import Cancelled, DeadlineExceeded, Interrupted, OpeaMediaError, ShuttingDown
from .jobs import DEADLINE, INTERRUPTED, SETTLED_WHEN_CANCELLED, SHUTDOWN, Job
from .metrics import Metrics

log = logging.getLogger("opea_media.server.worker")


class Outcomes:
    def __init__(self, metrics: Metrics, task: str) -> None:
        self._metrics = metrics
        self._task = task

    def deliver(self, job: Job, *, result: Any = None, error: OpeaMediaError | None = None) -> None:
        # Interrupted after its last step: the result is there, and its client still waits.
        if job.cancel_reason is not None and job.cancel_reason != INTERRUPTED:
            self.log_cancelled(job, "finished, but nobody was waiting for the result")
            return
        job.settle(result=result, error=error)

    def interrupted(self, job: Job) -> None:
        if job.cancel_reason == INTERRUPTED:
            self.log_cancelled(job, "interrupted")
            job.settle(error=Interrupted("interrupted by POST /sdapi/v1/interrupt before it finished"))
        elif job.cancel_reason is not None:
            self.log_cancelled(job, "interrupted")
        elif job.expired():
            self.give_up(
                job, DEADLINE, DeadlineExceeded("the request timed out during inference"), "interrupted"
            )
        else:  # interrupted for shutdown while this client still waited
            self.give_up(
                job,
                SHUTDOWN,
                ShuttingDown("the service shut down before this request finished"),
                "interrupted",
            )

    def give_up(
        self, job: Job, reason: str, error: OpeaMediaError, what: str = "dropped from the queue"
    ) -> None:
        job.cancel_reason = job.cancel_reason or reason
        self.log_cancelled(job, what)
        job.settle(error=error)

    def log_cancelled(self, job: Job, what: str) -> None:
        reason = job.cancel_reason or "unknown"
        if reason in SETTLED_WHEN_CANCELLED:
            job.settle(error=Cancelled(f"the job was {what} ({reason.replace('_', ' ')})"))
        self._metrics.jobs_cancelled.labels(reason).inc()
        log.info(
            "job %s (%s)",
            what,
            reason.replace("_", " "),
            extra={"request_id": job.request_id, "reason": reason, "task": self._task},
        )
