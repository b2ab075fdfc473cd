from __future__ import annotations

import math

import pytest

from opea_media.errors import InvalidInput
from opea_media.params import Image2VideoParams, Text2ImageParams, image_seed, resolve_seed


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"prompt": ""}, "prompt: must not be empty"),
        ({"prompt": "   "}, "prompt: must not be empty"),
        ({"prompt": 3}, "prompt: must be a string"),
        ({"prompt": "a\x00b"}, "prompt: must not contain NUL"),
        ({"prompt": "x" * 10_001}, "prompt: is 10001 characters long"),
        ({"num_images_per_prompt": 0}, "num_images_per_prompt: must be between 1 and 8, got 0"),
        ({"num_images_per_prompt": True}, "num_images_per_prompt: must be an integer"),
        ({"num_inference_steps": 0}, "num_inference_steps: must be between 1 and 150"),
        ({"num_inference_steps": 2.5}, "num_inference_steps: must be an integer"),
        ({"height": 100}, "height: must be a multiple of 8, got 100"),
        ({"width": 8}, "width: must be between 64 and 2048"),
        ({"guidance_scale": math.nan}, "guidance_scale: must be a finite number"),
        ({"guidance_scale": -1}, "guidance_scale: must be between 0 and 50"),
        ({"seed": -1}, "seed: must be between 0 and 4294967295"),
        ({"scheduler": "lms"}, "scheduler: unknown scheduler 'lms'"),
        ({"strength": 1.01}, "strength: must be between 0 and 1, got 1.01"),
        ({"strength": -0.5}, "strength: must be between 0 and 1, got -0.5"),
        ({"strength": math.inf}, "strength: must be a finite number"),
        ({"strength": "0.5"}, "strength: must be a number"),
    ],
)
def test_text2image_params_name_the_bad_field(fields: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Text2ImageParams(**{"prompt": "a cat", **fields})
    assert message in err.value.detail


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"num_frames": 1}, "num_frames: must be between 2 and 128"),
        ({"fps": 0}, "fps: must be between 1 and 60"),
        ({"motion_bucket_id": 5000}, "motion_bucket_id: must be between 0 and 1023"),
        ({"noise_aug_strength": 2.0}, "noise_aug_strength: must be between 0 and 1"),
        ({"decode_chunk_size": 0}, "decode_chunk_size: must be between 1 and 128"),
        ({"height": 577}, "height: must be a multiple of 8"),
    ],
)
def test_image2video_params_name_the_bad_field(fields: dict, message: str) -> None:
    with pytest.raises(InvalidInput) as err:
        Image2VideoParams(**fields)
    assert message in err.value.detail


def test_batch_key_ignores_prompt_and_seed_only() -> None:
    a = Text2ImageParams(prompt="a cat", seed=1)
    assert a.batch_key() == Text2ImageParams(prompt="a dog", seed=2).batch_key()
    assert a.batch_key() != Text2ImageParams(prompt="a cat", seed=1, num_inference_steps=3).batch_key()
    assert a.batch_key() != Text2ImageParams(prompt="a cat", seed=1, strength=0.5).batch_key()


def test_seeds_are_random_unless_given_and_wrap_within_range() -> None:
    assert resolve_seed(7) == 7
    assert len({resolve_seed(None) for _ in range(5)}) > 1
    assert image_seed(2**32 - 1, 1) == 0
