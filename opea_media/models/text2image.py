"""Text-to-image: one pipeline call for one request or a batch of compatible requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
)
from PIL import Image

from ..errors import ModelFailure
from ..params import Text2ImageParams, image_seed
from .inference import StepCallback, run_pipeline, step_callback

_SCHEDULERS: dict[str, Any] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
}


class Text2ImageModel:
    task = "text2image"

    def __init__(self, pipe: Any, *, ref: str, images_per_call: int = 8) -> None:
        self.pipe = pipe
        self.ref = ref
        self.images_per_call = images_per_call
        self._default_scheduler = pipe.scheduler
        self._schedulers: dict[str, Any] = {"default": pipe.scheduler}

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width) the model was trained at: 768x768 for SD 2.1."""
        side = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        return side, side

    def complete(self, params: Text2ImageParams) -> Text2ImageParams:
        """Fill the model-dependent defaults (size) so what ran can be reported exactly."""
        height, width = self.native_size
        return dataclasses.replace(params, height=params.height or height, width=params.width or width)

    def generate(
        self, batch: Sequence[Text2ImageParams], *, on_step: StepCallback | None = None
    ) -> list[list[Image.Image]]:
        """Run requests that share a batch_key; returns each request's images.

        Every image gets its own generator seeded image_seed(seed, i), so a request's images do not
        depend on what else was batched with it, nor on how many images one pipeline call holds
        (at most `images_per_call`: whole requests while they fit, else slices of one request).
        """
        first = batch[0]
        if any(p.batch_key() != first.batch_key() for p in batch):
            raise ValueError("requests in one batch must share every parameter but prompt and seed")
        if any(p.seed is None for p in batch):
            raise ValueError("resolve seeds before generating")
        n = first.num_images_per_prompt
        calls = self._calls(len(batch), n)
        steps = first.num_inference_steps
        self.pipe.scheduler = self._scheduler(first.scheduler)
        results: list[list[Image.Image]] = [[] for _ in batch]
        for index, (requests, start, count) in enumerate(calls):
            images = run_pipeline(
                self.pipe,
                prompt=[batch[r].prompt for r in requests],
                negative_prompt=[first.negative_prompt] * len(requests) if first.negative_prompt else None,
                num_images_per_prompt=count,
                num_inference_steps=steps,
                guidance_scale=first.guidance_scale,
                height=first.height or self.native_size[0],
                width=first.width or self.native_size[1],
                generator=[
                    torch.Generator("cpu").manual_seed(image_seed(batch[r].seed, start + i))  # type: ignore[arg-type]
                    for r in requests
                    for i in range(count)
                ],
                output_type="pil",
                callback_on_step_end=step_callback(steps * len(calls), on_step, done=steps * index),
            ).images
            if len(images) != count * len(requests):
                raise ModelFailure(
                    f"the pipeline returned {len(images)} images, expected {count * len(requests)}"
                )
            for j, r in enumerate(requests):
                results[r] += images[j * count : (j + 1) * count]
        return results

    def _calls(self, requests: int, n: int) -> list[tuple[range, int, int]]:
        """(request indices, first image index, images per request) of each pipeline call."""
        cap = self.images_per_call
        if n <= cap:
            per_call = cap // n
            return [(range(r, min(r + per_call, requests)), 0, n) for r in range(0, requests, per_call)]
        return [(range(r, r + 1), k, min(cap, n - k)) for r in range(requests) for k in range(0, n, cap)]

    def _scheduler(self, name: str) -> Any:
        if name not in self._schedulers:
            config = self._default_scheduler.config
            self._schedulers[name] = _SCHEDULERS[name].from_config(config)
        return self._schedulers[name]
