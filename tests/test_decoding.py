"""A 16-bit VAE that overflows (NaN pixels: a black picture) is decoded again in float32; one that
overflows even there fails the request with a clear error. Never a black picture as a success.

The tiny models run in float16 on the CPU here, with their VAE decoder's first convolution scaled
until its float16 activations pass 65504 (the float16 maximum) while float32 holds them.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from opea_media.errors import ModelFailure
from opea_media.models import ModelRegistry
from opea_media.params import Image2VideoParams, Text2ImageParams

T2I = Text2ImageParams(prompt="a red circle", num_inference_steps=2, height=64, width=64, seed=1)
I2V = Image2VideoParams(num_frames=2, num_inference_steps=2, height=64, width=64, seed=1)


@pytest.fixture(scope="module")
def half(cache_dir: Path, tiny_t2i: Any, tiny_i2v: Any) -> ModelRegistry:
    """float16 copies of the tiny models, whose weights these tests may spoil."""
    return ModelRegistry(device="cpu", dtype="float16", cache_dir=cache_dir)


def _overflow(vae: Any) -> None:
    """Weights float16 can hold (at most 30000) whose activations it cannot: NaN pixels in float16."""
    weight = vae.decoder.conv_in.weight
    with torch.no_grad():
        weight.mul_(30000.0 / float(weight.abs().max()))
        latents = torch.randn(1, vae.config.latent_channels, 8, 8, generator=torch.Generator().manual_seed(0))
        kwargs = {"num_frames": 1} if "num_frames" in vae.forward.__code__.co_varnames else {}
        pixels = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, **kwargs).sample
    assert not torch.isfinite(pixels).all(), "the VAE must overflow in float16 for this test to mean anything"


def _assert_a_picture(image: Any) -> None:
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.max() > 0 and pixels.std() > 1, "a black (or flat) picture"


def test_text2image_redecodes_an_overflowing_vae_in_float32(
    half: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    model = half.text2image("tiny")
    reference = model.generate([T2I])[0][0]
    _assert_a_picture(reference)
    _overflow(model.pipe.vae)
    with caplog.at_level(logging.WARNING, logger="opea_media.models.decoding"):
        image = model.generate([T2I])[0][0]
    _assert_a_picture(image)
    assert model.pipe.vae.dtype == torch.float16  # the VAE stays as it was loaded
    assert any("decoding again in float32" in r.getMessage() for r in caplog.records)

    with torch.no_grad():
        model.pipe.vae.decoder.conv_in.weight.mul_(1e4)  # infinite in float16, and so in float32 too
    with pytest.raises(ModelFailure, match="NaN or infinite pixels even in float32"):
        model.generate([T2I])


def test_image2video_redecodes_an_overflowing_vae_in_float32(
    half: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    from PIL import Image

    model = half.image2video("tiny")
    picture = Image.new("RGB", (64, 64), (200, 40, 40))
    _overflow(model.pipe.vae)
    with caplog.at_level(logging.WARNING, logger="opea_media.models.decoding"):
        frames = model.generate(picture, I2V)
    assert len(frames) == 2
    for frame in frames:
        _assert_a_picture(frame)
    assert any("decoding again in float32" in r.getMessage() for r in caplog.records)
