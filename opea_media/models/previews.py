"""Previews: a pipeline call's pictures as they take shape, decoded after the steps a caller asks for."""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from PIL import Image

from .decoding import decode_images

PreviewCallback = Callable[[int, list[Image.Image]], None]


class PreviewTap:
    """After each step in `steps` (1-based, per pipeline call), decode the call's images for `on_preview`.

    What is decoded is the scheduler's own estimate of the finished latents (x0) where its step
    reports one (DDIM, Euler, Euler-a; DPM++ keeps it as its last model output), which already
    looks like the picture after a few steps; otherwise (PNDM) the current, still noisy, latents.
    Nothing here draws random numbers or writes back into the pipeline's tensors, so a previewed
    call ends in the same pixels as one without previews.
    """

    def __init__(
        self,
        pipe: Any,
        steps: Collection[int],
        on_preview: PreviewCallback,
        *,
        finish: Callable[[Image.Image, int], Image.Image] | None = None,
    ) -> None:
        self.pipe = pipe
        self.steps = frozenset(steps)
        self.on_preview = on_preview
        # (preview, index in the call) -> what to show: inpainting pastes the kept region back.
        self.finish = finish
        self._x0: torch.Tensor | None = None

    @contextmanager
    def attached(self) -> Iterator[None]:
        """Record the scheduler's x0 estimate at each step of the call run inside this block."""
        scheduler = self.pipe.scheduler
        step = scheduler.step  # the class's method; the instance attribute below shadows it

        # wraps: pipelines read the step's signature to decide whether to pass `generator` (Euler-a
        # draws its noise from it) and `eta`.
        @functools.wraps(step)
        def recording_step(*args: Any, **kwargs: Any) -> Any:
            out = step(*args, **kwargs)
            self._x0 = _predicted_x0(scheduler, out)
            return out

        scheduler.step = recording_step
        try:
            yield
        finally:
            del scheduler.step

    def after_step(self, step: int, kwargs: dict[str, Any]) -> None:
        if step not in self.steps:
            return
        latents = self._x0 if self._x0 is not None else kwargs["latents"]
        images = decode_images(self.pipe, latents)
        if self.finish is not None:
            images = [self.finish(image, k) for k, image in enumerate(images)]
        self.on_preview(step, images)


def _predicted_x0(scheduler: Any, out: Any) -> torch.Tensor | None:
    if isinstance(out, tuple) and len(out) > 1:  # (prev_sample, pred_original_sample)
        return out[1]  # type: ignore[no-any-return]
    x0 = getattr(out, "pred_original_sample", None)
    if x0 is not None:
        return x0  # type: ignore[no-any-return]
    # DPM-Solver++ converts every model output into its x0 prediction and keeps the latest.
    if getattr(scheduler.config, "algorithm_type", None) in ("dpmsolver++", "sde-dpmsolver++"):
        outputs = getattr(scheduler, "model_outputs", None)
        if outputs and outputs[-1] is not None:
            return outputs[-1]  # type: ignore[no-any-return]
    return None
