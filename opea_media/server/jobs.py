"""A job: one admitted request, shared by its handler (on the event loop) and the worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ..params import Image2VideoParams, Text2ImageParams, image_seed

StepCallback = Callable[[int, int], None]

# Why an admitted job ended without its result reaching the client; also the metrics label.
CLIENT_DISCONNECTED = "client_disconnected"
DEADLINE = "deadline"
SHUTDOWN = "shutdown"
HANDLER_CANCELLED = "handler_cancelled"
INTERRUPTED = "interrupted"  # POST /sdapi/v1/interrupt
JOB_CANCELLED = "cancelled"  # DELETE /v1/jobs/{id}
LEASE_LOST = "lease_lost"  # a stored job's lease ran out and another replica took it
# A stored job's runner waits on its future whatever happens: these ends settle it too.
SETTLED_WHEN_CANCELLED = (JOB_CANCELLED, LEASE_LOST)


@dataclass(frozen=True)
class VideoRequest:
    """The decoded images of one image2video request and each clip's complete parameters."""

    images: tuple[Image.Image, ...]
    params: tuple[Image2VideoParams, ...]


@dataclass(frozen=True)
class EditRequest:
    """Image-to-image (inpainting with a mask, white = repaint): each image is edited with `params`
    (num_images_per_prompt results each); the mask, fitted like them, applies to the first."""

    params: Text2ImageParams
    images: tuple[Image.Image, ...]
    mask: Image.Image | None = None


Payload = Text2ImageParams | EditRequest | VideoRequest
PreviewCallback = Callable[[int, list[Image.Image]], None]


@dataclass(frozen=True)
class Previews:
    """Images decoded from the latents after each (1-based) step in `steps`, handed to `deliver`
    on the worker thread (partial images of a stream)."""

    steps: tuple[int, ...]
    deliver: PreviewCallback


class Job:
    """One request's work. The handler waits on `future`; the worker settles it from its thread."""

    def __init__(
        self,
        *,
        request_id: str,
        payload: Payload,
        deadline: float,
        loop: asyncio.AbstractEventLoop,
        previews: Previews | None = None,
        on_step: StepCallback | None = None,
    ) -> None:
        self.request_id = request_id
        self.payload = payload
        self.previews = previews
        self.on_step = on_step  # called on the worker thread after each denoising step
        self.deadline = deadline  # time.monotonic(), the same clock as loop.time()
        self.enqueued_at = time.monotonic()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.future: asyncio.Future[Any] = loop.create_future()
        self._loop = loop
        # Written by the event loop, read by the worker: a single attribute store is atomic.
        self.cancel_reason: str | None = None

    def batch_key(self) -> tuple[Any, ...] | None:
        """Jobs with equal keys can share one pipeline call; None: this job always runs alone
        (edits, clips, and generations that stream previews of their own)."""
        if isinstance(self.payload, Text2ImageParams) and self.previews is None:
            return self.payload.batch_key()
        return None

    def expired(self, now: float | None = None) -> bool:
        return (time.monotonic() if now is None else now) >= self.deadline

    def abandoned(self, now: float) -> bool:
        """Nobody will take this job's result: its client left or its deadline passed."""
        return self.cancel_reason is not None or self.expired(now)

    def settle(self, *, result: Any = None, error: BaseException | None = None) -> None:
        """Hand the outcome to the waiting handler; callable from any thread."""
        self.finished_at = time.monotonic()
        # RuntimeError: the loop is closed, the app is gone and nobody waits.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._settle_in_loop, result, error)

    def _settle_in_loop(self, result: Any, error: BaseException | None) -> None:
        if self.future.done():
            return
        if error is not None:
            self.future.set_exception(error)
        else:
            self.future.set_result(result)

    @property
    def queue_seconds(self) -> float | None:
        return None if self.started_at is None else self.started_at - self.enqueued_at

    @property
    def inference_seconds(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return self.finished_at - self.started_at


def run_text2image(model: Any, batch: Sequence[Job], on_step: StepCallback) -> list[Any]:
    """One pipeline call for the whole batch; each job gets its own list of images. An edit, or a
    generation with previews, is a batch of one."""
    head = batch[0]
    if isinstance(head.payload, EditRequest):
        return [run_edit(model, head.payload, on_step, head.previews)]
    params = [job.payload for job in batch]
    return list(model.generate(params, on_step=on_step, **_preview_options(head.previews)))


def _preview_options(previews: Previews | None) -> dict[str, Any]:
    if previews is None:
        return {}
    return {"on_preview": previews.deliver, "preview_steps": previews.steps}


def run_edit(
    model: Any, request: EditRequest, on_step: StepCallback, previews: Previews | None
) -> list[Image.Image]:
    """Every image's results in order; image i's results start at seed `seed + i * n`."""
    params, n = request.params, request.params.num_images_per_prompt
    assert params.seed is not None
    images: list[Image.Image] = []
    for index, image in enumerate(request.images):
        own = dataclasses.replace(params, seed=image_seed(params.seed, index * n))
        mask = request.mask if index == 0 else None
        images += model.edit(own, image, mask=mask, on_step=on_step, **_preview_options(previews))
    return images


def run_image2video(model: Any, batch: Sequence[Job], on_step: StepCallback) -> list[Any]:
    """One clip per input image, in order; image2video jobs are never merged."""
    clips_per_job = []
    for job in batch:
        request = job.payload
        assert isinstance(request, VideoRequest)
        clips = [
            model.generate(image, params, on_step=on_step)
            for image, params in zip(request.images, request.params, strict=True)
        ]
        clips_per_job.append(clips)
    return clips_per_job


RUNNERS: dict[str, Callable[[Any, Sequence[Job], StepCallback], list[Any]]] = {
    "text2image": run_text2image,
    "image2video": run_image2video,
}


@dataclass(frozen=True)
class Status:
    state: str  # "loading" | "ready" | "failed"
    detail: str


@dataclass(frozen=True)
class Progress:
    """Where the running pipeline call is: `step` of `total` (0 of 0 until its first step)."""

    step: int
    total: int
    started: float  # time.monotonic()
    jobs: int
