"""Image-to-video: one clip per call with Stable Video Diffusion."""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from PIL import Image

from ..errors import ModelFailure
from ..media.images import fit_image
from ..params import Image2VideoParams
from .decoding import decode_frames
from .inference import StepCallback, run_pipeline, step_callback


def _round64(x: float) -> int:
    return max(64, int(round(x / 64)) * 64)


class Image2VideoModel:
    task = "image2video"
    # Set by the registry: what runs the UNet and decoder, and what making it cost at load.
    backend = "torch"
    convert_seconds: float | None = None

    def __init__(self, pipe: Any, *, ref: str, decode_chunk_size: int | None = None) -> None:
        self.pipe = pipe
        self.ref = ref
        # Frames the VAE decodes at once when a request does not say; None: all at once.
        self.decode_chunk_size = decode_chunk_size

    @property
    def native_size(self) -> tuple[int, int]:
        """(height, width): SVD's landscape 576x1024 at its 768 px native scale, kept in proportion."""
        side = int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)
        return _round64(side * 3 / 4), _round64(side * 4 / 3)

    @property
    def native_frames(self) -> int:
        return int(self.pipe.unet.config.num_frames)

    def complete(self, params: Image2VideoParams) -> Image2VideoParams:
        """Fill the model-dependent defaults (size, frame count) so outputs can be checked."""
        height, width = self.native_size
        return dataclasses.replace(
            params,
            height=params.height or height,
            width=params.width or width,
            num_frames=params.num_frames or self.native_frames,
            decode_chunk_size=params.decode_chunk_size or self.decode_chunk_size,
        )

    def generate(
        self, image: Image.Image, params: Image2VideoParams, *, on_step: StepCallback | None = None
    ) -> list[Image.Image]:
        """Animate one image; the input is fitted to the clip size (cover, then centre crop)."""
        if params.seed is None:
            raise ValueError("resolve the seed before generating")
        p = self.complete(params)
        assert p.height and p.width and p.num_frames
        chunk = min(p.decode_chunk_size or p.num_frames, p.num_frames)
        latents = run_pipeline(
            self.pipe,
            image=fit_image(image, p.width, p.height),
            height=p.height,
            width=p.width,
            num_frames=p.num_frames,
            num_inference_steps=p.num_inference_steps,
            fps=p.fps,
            motion_bucket_id=p.motion_bucket_id,
            noise_aug_strength=p.noise_aug_strength,
            decode_chunk_size=chunk,
            generator=torch.Generator("cpu").manual_seed(p.seed),  # type: ignore[arg-type]
            output_type="latent",
            callback_on_step_end=step_callback(p.num_inference_steps, on_step),
        ).frames
        (frames,) = decode_frames(self.pipe, latents, num_frames=p.num_frames, chunk=chunk)
        if len(frames) != p.num_frames:
            raise ModelFailure(f"the pipeline returned {len(frames)} frames, expected {p.num_frames}")
        return list(frames)
