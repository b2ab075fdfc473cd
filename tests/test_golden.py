"""Golden pixels: a recorded seed remakes the image, on any machine, release after release.

A few output pixels of the built-in tiny pipelines are pinned as literal numbers for a fixed seed,
the way diffusers' own pipeline tests pin an `image_slice`. The wrappers hand out PIL images, so the
pins are uint8 channel values (what a user's PNG holds) compared with an absolute tolerance.

If a pin fails after a deliberate change (a diffusers or torch upgrade, a new TINY_VERSION, a
different default lever), then a seed recorded before that change no longer remakes its image:
say so in the change's notes and re-pin with the values the failure message prints.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from opea_media.models.image2video import Image2VideoModel
from opea_media.models.text2image import Text2ImageModel
from opea_media.params import SCHEDULERS, Image2VideoParams, Text2ImageParams

# uint8 levels. float32 kernels of other CPUs (AVX2, AVX-512, no SIMD at all), other thread counts
# and channels_last off moved no pixel of these runs by more than 1 level, and no pinned one at all.
TOLERANCE = 2

SEED = 0
OTHER_SEED = 1
PROMPT = "a red fox"

# Rows 38-40, columns 34-36 of the red channel: a 3x3 patch of the 64x64 image where the samplers'
# images differ most (at least 33 levels between any two), with no pixel clipped near 0 or 255 (a
# clipped pixel would hide a change). A corner, as diffusers pins, tells DDIM from Euler less well.
# Re-pinned with TINY_VERSION 2, whose scheduler file is SD 2.1's own: Euler and DPM++ then space
# their timesteps as they do on the real model.
IMAGE_PATCH = (slice(38, 41), slice(34, 37), 0)
IMAGE_PINS: dict[str, list[int]] = {
    "ddim": [60, 88, 166, 40, 120, 126, 43, 95, 181],
    "euler": [33, 91, 177, 11, 120, 125, 71, 132, 199],
    "euler-a": [83, 113, 105, 109, 109, 44, 176, 127, 96],
    "dpm++": [52, 127, 167, 24, 139, 129, 45, 138, 193],
    "pndm": [61, 128, 166, 45, 149, 119, 32, 141, 160],
}
# "default" is the checkpoint's own scheduler, which for the tiny pipeline, as for SD 2.1, is DDIM.
IMAGE_PINS["default"] = IMAGE_PINS["ddim"]

# Rows 41-43, columns 40-42 of the red channel: where another seed moves the clip most, first
# frame and last (at least 124 levels), with no pixel clipped.
FRAME_PATCH = (slice(41, 44), slice(40, 43), 0)
FIRST_FRAME_PIN = [83, 100, 79, 86, 93, 74, 91, 98, 55]
LAST_FRAME_PIN = [101, 109, 99, 122, 129, 112, 121, 122, 109]


def patch(image: Image.Image, where: tuple[slice, slice, int]) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)[where].flatten()


def off_by(got: np.ndarray, pin: list[int]) -> int:
    """The largest difference, in uint8 levels, between a patch and its pin."""
    return int(np.abs(got - np.array(pin, dtype=np.int16)).max())


def image_params(scheduler: str, seed: int) -> Text2ImageParams:
    return Text2ImageParams(
        prompt=PROMPT,
        num_inference_steps=3,
        guidance_scale=7.5,
        height=64,
        width=64,
        seed=seed,
        scheduler=scheduler,
    )


def source_image() -> Image.Image:
    """A 64x64 colour ramp, made here so that no image decoder or resampler stands between."""
    ramp = np.linspace(0, 255, 64 * 64 * 3).reshape(64, 64, 3)
    return Image.fromarray(ramp.astype(np.uint8))


def video_params(seed: int) -> Image2VideoParams:
    # decode_chunk_size is given: it is a memory lever (2 on a CPU, 8 with CUDA), but SVD's temporal
    # decoder mixes the frames of a chunk, so it changes the pixels, by up to 130 levels here.
    return Image2VideoParams(
        num_frames=3, num_inference_steps=2, height=64, width=64, decode_chunk_size=2, seed=seed
    )


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_seed_remakes_the_pinned_image(tiny_t2i: Text2ImageModel, scheduler: str) -> None:
    assert tiny_t2i.pipe.unet.dtype == torch.float32, "the pins are float32 pixels"
    assert scheduler in IMAGE_PINS, f"pin the {scheduler!r} scheduler's pixels in IMAGE_PINS"
    pin = IMAGE_PINS[scheduler]

    [[image]] = tiny_t2i.generate([tiny_t2i.complete(image_params(scheduler, SEED))])
    got = patch(image, IMAGE_PATCH)
    assert image.size == (64, 64)
    assert off_by(got, pin) <= TOLERANCE, f"{scheduler}, seed {SEED}: pinned {pin}, got {got.tolist()}"

    # Another seed fails the same check: the pin is about this seed's image, not any image.
    [[other]] = tiny_t2i.generate([tiny_t2i.complete(image_params(scheduler, OTHER_SEED))])
    assert off_by(patch(other, IMAGE_PATCH), pin) > TOLERANCE


def test_the_pins_tell_the_schedulers_apart() -> None:
    """Running one scheduler under another's name fails its pin: each pair is > 2 tolerances apart."""
    for a, b in itertools.combinations(sorted(set(SCHEDULERS) - {"default"}), 2):
        assert off_by(np.array(IMAGE_PINS[a], dtype=np.int16), IMAGE_PINS[b]) > 2 * TOLERANCE, (a, b)


def test_a_seed_remakes_the_pinned_clip(tiny_i2v: Image2VideoModel) -> None:
    assert tiny_i2v.pipe.unet.dtype == torch.float32, "the pins are float32 pixels"

    frames = tiny_i2v.generate(source_image(), video_params(SEED))
    first, last = patch(frames[0], FRAME_PATCH), patch(frames[-1], FRAME_PATCH)
    assert len(frames) == 3 and frames[0].size == (64, 64)
    assert off_by(first, FIRST_FRAME_PIN) <= TOLERANCE, f"first frame: got {first.tolist()}"
    assert off_by(last, LAST_FRAME_PIN) <= TOLERANCE, f"last frame: got {last.tolist()}"

    other = tiny_i2v.generate(source_image(), video_params(OTHER_SEED))
    assert off_by(patch(other[0], FRAME_PATCH), FIRST_FRAME_PIN) > TOLERANCE
    assert off_by(patch(other[-1], FRAME_PATCH), LAST_FRAME_PIN) > TOLERANCE
