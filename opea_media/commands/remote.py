"""`--server URL`: generate-image and animate as clients of a running service's jobs API.

The commands plan a remote run as they plan a local one (the seeds, the -o names) and differ
only in who runs the model: here each prompt (or input image) is one job on the service, run one
after another as a local run would, followed through its events on the same progress bar, its
result files written as they came (the service's PNGs already carry the CLI's text chunks).
"""

from __future__ import annotations

import base64
import logging
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import DEFAULT_PORTS, Task, envvar
from ..errors import Cancelled, InvalidInput, OpeaMediaError, error_for_status
from ..models.tuning import LEVERS
from ..params import Image2VideoParams, Text2ImageParams
from .options import F, apply, given
from .progress import Reporter, StepReporter

if TYPE_CHECKING:
    from ..client import JobsClient

log = logging.getLogger(__name__)

# What the service decides, not the client (the levers of the task besides).
MODEL_OPTIONS = ("model", "device", "dtype", "allow_pickle_weights")
CANCEL_TIMEOUT = 5.0  # seconds: Ctrl-C should not hang on a service that stopped answering


def server_options(task: Task) -> Callable[[F], F]:
    """--server / --api-key (OPEA_MEDIA_SERVER / OPEA_MEDIA_API_KEY: serve's key is the same key)."""
    return apply(
        click.option(
            "--server",
            metavar="URL",
            default=None,
            help=f"Run on the opea-media service at URL (e.g. http://localhost:{DEFAULT_PORTS[task]}) "
            "through its jobs API instead of loading a model here; the service's model, device and "
            "levers apply.",
        ),
        click.option(
            "--api-key",
            default=None,
            show_default=False,
            help="With --server: the service's API key (serve --api-key). Prefer the environment "
            "variable: command lines are visible to every user of the machine.",
        ),
    )


def check_flags(ctx: click.Context, task: Task, *, server: str | None, refused: dict[str, str]) -> None:
    """Refuse, in one line, flags that cannot mean what they say with (or without) --server.

    With --server the model-side flags typed on the command line are refused, not ignored: a
    person who typed --model X expects X, and a result silently made by another model would be
    a wasted run. Values from OPEA_MEDIA_* variables are ignored instead: a shell or compose
    file that sets them for `serve` (OPEA_MEDIA_TEXT2IMAGE_MODEL ...) must not break a client.
    `refused`: the command's own options that have no remote meaning, with why.
    """
    if server is None:
        if given(ctx, "api_key"):
            raise click.UsageError("--api-key needs --server: it is the key of the service to run on")
        return
    from ..client import service_url

    try:
        service_url(server)
    except ValueError as exc:
        raise click.BadParameter(str(exc), ctx, param_hint="'--server'") from None
    local = f"unset {envvar('server')}" if not given(ctx, "server") else "run without --server"
    names = [*MODEL_OPTIONS, *(lever.name for lever in LEVERS if task in lever.tasks)]
    typed = [_flag(ctx, name) for name in names if given(ctx, name)]
    if typed:
        them = "it" if len(typed) == 1 else "them"
        raise click.UsageError(
            f"{', '.join(typed)}: with --server the service's own model, device and levers apply; "
            f"drop {them}, or {local} to use {them} here"
        )
    for name, why in refused.items():  # the first says enough
        raise click.UsageError(f"{_flag(ctx, name)} cannot be used with --server: {why}; or {local}")


def _flag(ctx: click.Context, name: str) -> str:
    for param in ctx.command.params:
        if param.name == name and isinstance(param, click.Option):
            return max(param.opts, key=len)
    return name


# --- the service's request bodies -------------------------------------------------------------------


def text2image_body(params: Text2ImageParams) -> dict[str, Any]:
    """The text2image service's request (its seed explicit: the client planned it)."""
    return {
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt,
        "num_images_per_prompt": params.num_images_per_prompt,
        "num_inference_steps": params.num_inference_steps,
        "guidance_scale": params.guidance_scale,
        "height": params.height,
        "width": params.width,
        "seed": params.seed,
    }


def image2video_body(params: Image2VideoParams, image: bytes) -> dict[str, Any]:
    """The image2video service's request for one clip of `image` (its file's bytes, as base64)."""
    return {
        "images_path": [{"image_path": base64.b64encode(image).decode("ascii")}],
        "num_frames": params.num_frames,
        "fps": params.fps,
        "motion_bucket_id": params.motion_bucket_id,
        "noise_aug_strength": params.noise_aug_strength,
        "decode_chunk_size": params.decode_chunk_size,
        "num_inference_steps": params.num_inference_steps,
        "seed": params.seed,
        "height": params.height,
        "width": params.width,
    }


# --- running the jobs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class RemoteJob:
    label: str  # the progress bar's, as a local run labels it
    body: dict[str, Any]
    steps: int  # the bar's total until the service reports its own
    outputs: int  # result files it must give (one format each)


def run_jobs(
    task: Task,
    *,
    server: str,
    api_key: str | None,
    jobs: Sequence[RemoteJob],
    formats: Sequence[str],
    paths: Sequence[Path],
    reporter: Reporter,
    phases: bool = False,
) -> Iterator[tuple[Path, dict[str, Any]]]:
    """Run each job in turn and write its result files to the next of `paths`; yield each path
    with its file's JSON ({url, format, output, seed}). `phases`: the bar also names the phase.

    Ctrl-C cancels the job then running (DELETE) and ends in KeyboardInterrupt saying so.
    """
    from ..client import JobsClient
    from ..media.files import write_atomic

    client = JobsClient(server, api_key=api_key)
    runs = client.service()
    if runs is not None and runs != task:
        raise InvalidInput(
            f"{client.base_url} runs the {runs} service, not {task}: point --server at the {task} "
            f"service (port {DEFAULT_PORTS[task]} by default)"
        )
    targets = iter(paths)
    for job in jobs:
        key = f"opea-media-cli-{uuid.uuid4().hex}"
        job_id: str | None = None
        try:
            submitted = client.submit(job.body, formats=formats, idempotency_key=key)
            job_id = submitted["id"]
            log.info("submitted job %s to %s", job_id, client.base_url)
            with reporter.steps(job.label, job.steps) as bar:
                final = _follow(client, job_id, job.label, bar, phases=phases)
            files = _result_files(final, job.outputs, formats)
            for file in files:
                path = next(targets)
                write_atomic(path, client.download(file["url"]))
                yield path, file
        except KeyboardInterrupt:
            raise KeyboardInterrupt(_cancel(client, job_id, job, formats, key)) from None


def _follow(
    client: JobsClient, job_id: str, label: str, bar: StepReporter, *, phases: bool
) -> dict[str, Any]:
    """Show the job's events on the bar; the job as it ended, or the error it failed with."""
    for view in client.follow(job_id):
        state = view["state"]
        if state == "queued":
            bar.describe(f"{label}: queued, position {view['position']}")
        elif state == "running":
            progress = view["progress"] or {}
            bar.describe(f"{label}: {progress['phase']}" if phases and progress else label)
            if progress.get("total"):
                bar(progress["step"], progress["total"])
        elif state == "succeeded":
            bar.describe(label)
            steps = view["result"]["num_inference_steps"]
            bar(steps, steps)
            return view
        elif state == "failed":
            error = view["error"] or {}
            raise error_for_status(int(error.get("status_code", 500)), error.get("detail", "the job failed"))
        elif state == "cancelled":
            raise Cancelled(f"job {job_id} was cancelled on the service")
    raise OpeaMediaError(f"the events of job {job_id} ended before the job did")


def _result_files(job: dict[str, Any], outputs: int, formats: Sequence[str]) -> list[dict[str, Any]]:
    files = sorted(job["result"]["files"], key=lambda f: (f["output"], formats.index(f["format"])))
    if len(files) != outputs * len(formats):
        raise OpeaMediaError(
            f"job {job['id']} gave {len(files)} result files; {outputs * len(formats)} were expected"
        )
    return files


def _cancel(client: JobsClient, job_id: str | None, job: RemoteJob, formats: Sequence[str], key: str) -> str:
    """Cancel the job a Ctrl-C left behind; what became of it, in a few words.

    Interrupted during the submit itself, the job may exist without its id having arrived: the
    same Idempotency-Key answers with that job (or makes it, cancelled at once while queued).
    """
    from ..client import JobsClient

    quick = JobsClient(client.base_url, api_key=client.api_key, timeout=CANCEL_TIMEOUT)
    try:
        if job_id is None:
            job_id = quick.submit(job.body, formats=formats, idempotency_key=key)["id"]
        state = quick.cancel(job_id)["state"]
    except OpeaMediaError as exc:
        if job_id is not None and exc.http_status == 409:  # it ended before the DELETE arrived
            return f"job {job_id} had already ended"
        return f"could not cancel job {job_id or '(being submitted)'}: {exc.detail}"
    if state == "cancelled":
        return f"job {job_id} cancelled on the service"
    return f"job {job_id} will stop at its next step on the service"
