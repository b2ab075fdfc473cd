"""Latents to pictures, never a black picture called a success.

A 16-bit VAE can overflow (SD 2.1's and SVD's are known to in float16 at some sizes): the decoded
pixels hold NaN or infinity, which become black after the cast to 8 bits. Every decode here checks
the pixels and, when they are not finite, decodes the same latents again with the VAE in float32;
if even that is not finite, the request fails with a clear 500 instead.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from PIL import Image

from ..errors import ModelFailure
from .inference import library_errors

log = logging.getLogger(__name__)


def decode_images(pipe: Any, latents: torch.Tensor) -> list[Image.Image]:
    """A Stable Diffusion pipeline's latents (output_type="latent") as PIL images."""

    def decode(vae: Any) -> torch.Tensor:
        return vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]

    return list(pipe.image_processor.postprocess(finite_decode(pipe.vae, decode), output_type="pil"))


def decode_frames(pipe: Any, latents: torch.Tensor, *, num_frames: int, chunk: int) -> list[list[Image.Image]]:
    """A Stable Video Diffusion pipeline's latents (output_type="latent") as each clip's frames."""

    def decode(vae: Any) -> torch.Tensor:
        return pipe.decode_latents(latents.to(vae.dtype), num_frames, chunk)  # type: ignore[no-any-return]

    decoded = finite_decode(pipe.vae, decode)
    return [list(clip) for clip in pipe.video_processor.postprocess_video(video=decoded, output_type="pil")]


def finite_decode(vae: Any, decode: Callable[[Any], torch.Tensor]) -> torch.Tensor:
    """decode(vae); again in float32 if its pixels are not all finite; ModelFailure if still not."""
    with library_errors(), torch.inference_mode():
        pixels = decode(vae)
        if bool(torch.isfinite(pixels).all()):
            return pixels
        dtype = vae.dtype
        if dtype != torch.float32:
            log.warning(
                "the VAE overflowed in %s (the decoded pixels hold NaN or infinity); decoding again in "
                "float32",
                str(dtype).removeprefix("torch."),
                extra={"dtype": str(dtype).removeprefix("torch.")},
            )
            # nn.Module.to: diffusers' own .to() warns about modules to keep in float32.
            torch.nn.Module.to(vae, dtype=torch.float32)
            try:
                pixels = decode(vae)
            finally:
                torch.nn.Module.to(vae, dtype=dtype)
            if bool(torch.isfinite(pixels).all()):
                return pixels
    raise ModelFailure(
        "the VAE decoded NaN or infinite pixels even in float32; the model's weights are broken "
        "(this would have been a black picture)"
    )
