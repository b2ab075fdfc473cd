"""Text-to-image: one pipeline call for one request or a batch of compatible requests."""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Iterable, Sequence
from contextlib import nullcontext
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
from .decoding import decode_images
from .editing import EditPipelines, denoising_steps, fit_inputs, keep_unmasked, pipeline_strength, strength_of
from .inference import StepCallback, run_pipeline, step_callback
from .previews import PreviewCallback, PreviewTap

_SCHEDULERS: dict[str, Any] = {
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
}


class Text2ImageModel:
    task = "text2image"
    # Set by the registry: what runs the UNet and decoder, and what making it cost at load.
    backend = "torch"
    convert_seconds: float | None = None

    def __init__(self, pipe: Any, *, ref: str, images_per_call: int = 8) -> None:
        self.pipe = pipe
        self.ref = ref
        self.images_per_call = images_per_call
        self._default_scheduler = pipe.scheduler
        self._schedulers: dict[str, Any] = {"default": pipe.scheduler}
        self._edit_pipes = EditPipelines(pipe)

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
        self,
        batch: Sequence[Text2ImageParams],
        *,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_steps: Collection[int] = (),
    ) -> list[list[Image.Image]]:
        """Run requests that share a batch_key; returns each request's images.

        Every image gets its own generator seeded image_seed(seed, i), so a request's images do not
        depend on what else was batched with it, nor on how many images one pipeline call holds
        (at most `images_per_call`: whole requests while they fit, else slices of one request).
        `on_preview(step, images)` gets each pipeline call's previews after the steps in
        `preview_steps` (1-based, per call): that call's images, in the batch's order.
        """
        first = batch[0]
        if any(p.batch_key() != first.batch_key() for p in batch):
            raise ValueError("requests in one batch must share every parameter but prompt and seed")
        seeds = [p.seed for p in batch if p.seed is not None]
        if len(seeds) != len(batch):
            raise ValueError("resolve seeds before generating")
        if first.strength is not None:
            raise ValueError("strength needs an input image: use edit()")
        n = first.num_images_per_prompt
        calls = self._calls(len(batch), n)
        steps = first.num_inference_steps
        self.pipe.scheduler = self._scheduler(first.scheduler)
        results: list[list[Image.Image]] = [[] for _ in batch]
        for index, (requests, start, count) in enumerate(calls):
            images = self._run(
                self.pipe,
                progress=(steps * len(calls), steps * index, on_step),
                preview=self._preview_tap(self.pipe, on_preview, preview_steps),
                prompt=[batch[r].prompt for r in requests],
                negative_prompt=[first.negative_prompt] * len(requests) if first.negative_prompt else None,
                num_images_per_prompt=count,
                num_inference_steps=steps,
                guidance_scale=first.guidance_scale,
                height=first.height or self.native_size[0],
                width=first.width or self.native_size[1],
                generator=_generators(
                    image_seed(seeds[r], start + i) for r in requests for i in range(count)
                ),
            )
            for j, r in enumerate(requests):
                results[r] += images[j * count : (j + 1) * count]
        return results

    @property
    def can_edit(self) -> bool:
        """Whether edit() works with this pipeline (Stable Diffusion and SDXL; else InvalidInput)."""
        return self._edit_pipes.supported

    def edit_steps(self, params: Text2ImageParams) -> int:
        """How many steps each pipeline call of edit(params) denoises: int(steps * strength), at least 1."""
        return denoising_steps(params.num_inference_steps, strength_of(params))

    def edit(
        self,
        params: Text2ImageParams,
        image: Image.Image,
        *,
        mask: Image.Image | None = None,
        on_step: StepCallback | None = None,
        on_preview: PreviewCallback | None = None,
        preview_steps: Collection[int] = (),
    ) -> list[Image.Image]:
        """Image-to-image (no mask) or inpainting (mask: white is repainted, black kept) of one image.

        The image (and the mask) is fitted to params' size; strength None means the default. Image
        k is seeded image_seed(seed, k), as generate() seeds it. Steps, for on_step and
        preview_steps alike, count the edit_steps(params) steps each pipeline call denoises.
        """
        if params.seed is None:
            raise ValueError("resolve the seed before editing")
        p = self.complete(params)
        assert p.width and p.height and p.seed is not None
        init, fitted_mask = fit_inputs(image, mask, p.width, p.height)
        pipe = self._edit_pipes.get(inpaint=fitted_mask is not None)
        pipe.scheduler = self._scheduler(p.scheduler)
        steps = self.edit_steps(p)
        extra: dict[str, Any] = {}
        finish = None
        if fitted_mask is not None:
            extra = {"height": p.height, "width": p.width}
            finish = keep_unmasked(init, fitted_mask)
        calls = self._calls(1, p.num_images_per_prompt)
        images: list[Image.Image] = []
        for index, (_, start, count) in enumerate(calls):
            if fitted_mask is not None:
                extra["mask_image"] = [fitted_mask] * count
            # One init image per output, so each image's VAE sample is drawn from its own generator.
            images += self._run(
                pipe,
                progress=(steps * len(calls), steps * index, on_step),
                preview=self._preview_tap(pipe, on_preview, preview_steps, finish=finish),
                prompt=[p.prompt] * count,
                negative_prompt=[p.negative_prompt] * count if p.negative_prompt else None,
                image=[init] * count,
                strength=pipeline_strength(p.num_inference_steps, strength_of(p)),
                num_inference_steps=p.num_inference_steps,
                guidance_scale=p.guidance_scale,
                generator=_generators(image_seed(p.seed, start + i) for i in range(count)),
                **extra,
            )
        return images

    @staticmethod
    def _preview_tap(
        pipe: Any, on_preview: PreviewCallback | None, steps: Collection[int], *, finish: Any = None
    ) -> PreviewTap | None:
        if on_preview is None or not steps:
            return None
        return PreviewTap(pipe, steps, on_preview, finish=finish)

    @staticmethod
    def _run(
        pipe: Any,
        *,
        progress: tuple[int, int, StepCallback | None],
        preview: PreviewTap | None,
        **kwargs: Any,
    ) -> list[Image.Image]:
        """One pipeline call; its images, checked to be as many as it was given generators.

        `progress`: (the job's total steps, steps of its earlier calls, on_step).
        """
        total, done, on_step = progress
        callback = step_callback(total, on_step, done=done, then=preview.after_step if preview else None)
        with preview.attached() if preview is not None else nullcontext():
            latents = run_pipeline(pipe, output_type="latent", callback_on_step_end=callback, **kwargs).images
        images = decode_images(pipe, latents)
        expected = len(kwargs["generator"])
        if len(images) != expected:
            raise ModelFailure(f"the pipeline returned {len(images)} images, expected {expected}")
        return list(images)

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


def _generators(seeds: Iterable[int]) -> list[torch.Generator]:
    """One CPU generator per image: its latents depend on its seed alone, on any device."""
    return [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
