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

    def __init__(self, pipe: Any, *, ref: str) -> None:
        self.pipe = pipe
        self.ref = ref
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
        """Run requests that share a batch_key in one call; returns each request's images.

        Every image gets its own generator seeded image_seed(seed, i), so a request's images do not
        depend on what else was batched with it.
        """
        first = batch[0]
        if any(p.batch_key() != first.batch_key() for p in batch):
            raise ValueError("requests in one batch must share every parameter but prompt and seed")
        if any(p.seed is None for p in batch):
            raise ValueError("resolve seeds before generating")
        generators = [
            torch.Generator("cpu").manual_seed(image_seed(p.seed, i))  # type: ignore[arg-type]
            for p in batch
            for i in range(p.num_images_per_prompt)
        ]
        self.pipe.scheduler = self._scheduler(first.scheduler)
        images = run_pipeline(
            self.pipe,
            prompt=[p.prompt for p in batch],
            negative_prompt=[first.negative_prompt] * len(batch) if first.negative_prompt else None,
            num_images_per_prompt=first.num_images_per_prompt,
            num_inference_steps=first.num_inference_steps,
            guidance_scale=first.guidance_scale,
            height=first.height or self.native_size[0],
            width=first.width or self.native_size[1],
            generator=generators,
            output_type="pil",
            callback_on_step_end=step_callback(first.num_inference_steps, on_step),
        ).images
        n = first.num_images_per_prompt
        if len(images) != n * len(batch):
            raise ModelFailure(f"the pipeline returned {len(images)} images, expected {n * len(batch)}")
        return [images[i * n : (i + 1) * n] for i in range(len(batch))]

    def _scheduler(self, name: str) -> Any:
        if name not in self._schedulers:
            config = self._default_scheduler.config
            self._schedulers[name] = _SCHEDULERS[name].from_config(config)
        return self._schedulers[name]
