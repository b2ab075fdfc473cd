"""The jobs API's answers: a job, a page of jobs (the submit bodies are the services' own requests)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from ..config import JOB_STATES, Task
from .job_store import JobRecord
from .wire import ErrorBody, Outputs

JobState = Literal[JOB_STATES]  # type: ignore[valid-type]


class JobProgress(BaseModel):
    step: int = Field(ge=0, description="Denoising steps done in the running pipeline call.")
    total: int = Field(ge=0, description="Its steps in all (0 until the first step).")
    phase: Literal["encoding", "denoising", "decoding"] = Field(
        description="encoding the inputs (image2video), the denoising steps, decoding the outputs."
    )


class JobFile(BaseModel):
    url: str = Field(description="Where to GET the file, until the service's output retention time.")
    format: Literal["png", "webp", "mp4", "gif"]
    content_type: str
    output: int = Field(ge=0, description="Which output (image or clip) of the job it is.")
    seed: int | None = Field(description="That output's seed: it remakes that output alone.")


class JobResult(Outputs):
    files: list[JobFile]


class JobView(BaseModel):
    id: str
    object: Literal["job"] = "job"
    service: Task
    state: JobState
    created_at: str = Field(description="ISO 8601, UTC.")
    started_at: str | None = Field(description="When its current (or last) run started.")
    finished_at: str | None
    position: int | None = Field(description="Queued: 1 for the next job to run; else null.")
    progress: JobProgress | None = Field(description="Running: where it is; else null.")
    cancel_requested: bool = Field(description="DELETE asked a running job to stop at its next step.")
    attempts: int = Field(description="How many times a service started it (a restart runs it again).")
    request: dict[str, Any] = Field(
        description="The request as it runs: the submitted fields with the seed chosen (image2video: "
        "without the input images, which are stored with the job)."
    )
    formats: list[str] = Field(description="The result files' formats, as asked with ?formats=.")
    result: JobResult | None = Field(description="Succeeded: the result files and what made them.")
    error: ErrorBody | None = Field(
        description="Failed: the detail and status the synchronous endpoint would have answered."
    )


class JobList(BaseModel):
    jobs: list[JobView] = Field(description="Newest first.")
    next: str | None = Field(description="Pass as ?before= for the next page; null on the last page.")


def timestamp(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def job_view(
    record: JobRecord, *, position: int | None, url_of: Any, default_formats: tuple[str, ...]
) -> JobView:
    """The job as clients see it; `url_of(name)` turns a stored file's name into its URL."""
    progress = None
    if record.state == "running":
        phase = record.phase or ("encoding" if record.task == "image2video" else "denoising")
        progress = JobProgress(step=record.step, total=record.total, phase=phase)  # type: ignore[arg-type]
    result = None
    if record.result is not None:
        files = [
            JobFile(url=url_of(f["name"]), **{k: v for k, v in f.items() if k != "name"})
            for f in record.result["files"]
        ]
        result = JobResult(**{**record.result, "files": files})
    request = {k: v for k, v in record.request.items() if k != "inputs"}
    return JobView(
        id=record.id,
        service=record.task,  # type: ignore[arg-type]
        state=record.state,  # type: ignore[arg-type]
        created_at=timestamp(record.created_at),  # type: ignore[arg-type]
        started_at=timestamp(record.started_at),
        finished_at=timestamp(record.finished_at),
        position=position if record.state == "queued" else None,
        progress=progress,
        cancel_requested=record.cancel_requested,
        attempts=record.attempts,
        request=request,
        formats=list(record.formats or default_formats),
        result=result,
        error=None if record.error is None else ErrorBody(**record.error),
    )
