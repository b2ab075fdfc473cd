"""Request parsing: OPEA's fields, nulls as defaults, unknown fields and LoRA refused, params.py limits."""

from __future__ import annotations

import pytest
from server_support import OPEA_SDINPUTS_FIELDS, parse_image2video, parse_text2image

from opea_media.errors import InvalidInput
from opea_media.params import (
    MAX_IMAGES_PER_REQUEST,
    STEPS,
    TEXT2IMAGE_DEFAULT_STEPS,
    Image2VideoParams,
    Text2ImageParams,
)

# Every field of OPEA's text2image request type, as a client that serialises its model sends them.
OPEA_ALL_NULL = {field: None for field in OPEA_SDINPUTS_FIELDS} | {"prompt": "a red fox"}


def test_opea_request_with_every_optional_field_null_gets_the_defaults() -> None:
    assert parse_text2image(OPEA_ALL_NULL) == Text2ImageParams(prompt="a red fox")


def test_text2image_fields_reach_the_params() -> None:
    params = parse_text2image(
        {
            "prompt": "a fox",
            "negative_prompt": "blurry",
            "num_images_per_prompt": 2,
            "num_inference_steps": 3,
            "guidance_scale": 5,
            "seed": 7,
            "height": 64,
            "width": 128,
        }
    )
    assert (params.num_images_per_prompt, params.num_inference_steps, params.guidance_scale) == (2, 3, 5)
    assert (params.seed, params.height, params.width, params.negative_prompt) == (7, 64, 128, "blurry")
    assert params.scheduler == Text2ImageParams(prompt="x").scheduler  # not settable over HTTP


def test_lora_is_refused_by_name() -> None:
    with pytest.raises(InvalidInput, match="lora_weight_name_or_path: LoRA weights are not supported"):
        parse_text2image({"prompt": "x", "lora_weight_name_or_path": "some/lora"})


def test_unknown_fields_are_named() -> None:
    with pytest.raises(
        InvalidInput, match=r"unknown fields 'model_name_or_path', 'token'; accepted fields: prompt"
    ):
        parse_text2image({"prompt": "x", "model_name_or_path": "a/b", "token": "t"})


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "prompt: is required"),
        ({"prompt": None}, "prompt: is required"),
        ({"prompt": ""}, "prompt: must not be empty"),
        ({"prompt": 5}, "prompt: must be a string"),
        (
            {"prompt": "x", "num_inference_steps": STEPS.max + 1},
            "num_inference_steps: must be between 1 and 150",
        ),
        ({"prompt": "x", "num_inference_steps": 2.5}, "num_inference_steps: must be an integer"),
        ({"prompt": "x", "num_inference_steps": "2"}, "num_inference_steps: must be an integer"),
        ({"prompt": "x", "num_inference_steps": "2"}, "num_inference_steps: must be an integer"),
        ({"prompt": "x", "num_inference_steps": float("inf")}, "num_inference_steps: must be an integer"),
        ({"prompt": "x", "num_images_per_prompt": True}, "num_images_per_prompt: must be an integer"),
        ({"prompt": "x", "height": 100}, "height: must be a multiple of 8"),
        ({"prompt": "x", "seed": -1}, "seed: must be between 0"),
        ({"prompt": "x", "guidance_scale": "high"}, "guidance_scale: must be a number"),
    ],
)
def test_text2image_limits_are_those_of_params(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_text2image(body)


def test_an_integral_number_is_an_integer_as_json_schema_says() -> None:
    # 2.0 is what some JSON encoders write for 2; JSON Schema's "integer" (and OPEA's pydantic) take it.
    params = parse_text2image({"prompt": "x", "num_inference_steps": 2.0, "seed": 1e3})
    assert (params.num_inference_steps, params.seed) == (2, 1000)
    assert isinstance(params.num_inference_steps, int)


def test_defaults_come_from_params() -> None:
    assert parse_text2image({"prompt": "x"}).num_inference_steps == TEXT2IMAGE_DEFAULT_STEPS


def test_image2video_sources_and_params() -> None:
    sources, params = parse_image2video(
        {
            "images_path": [{"image_path": "https://example.com/a.png"}, {"image_path": "iVBORw0KGgo="}],
            "num_frames": 4,
            "fps": 8,
            "num_inference_steps": 2,
            "seed": 3,
            "decode_chunk_size": None,
        }
    )
    assert sources == ["https://example.com/a.png", "iVBORw0KGgo="]
    assert params == Image2VideoParams(num_frames=4, fps=8, num_inference_steps=2, seed=3)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "images_path: is required"),
        ({"images_path": "http://x/a.png"}, "images_path: must be a list"),
        ({"images_path": []}, "images_path: must hold at least one image"),
        (
            {"images_path": [{"image_path": "a"}] * (MAX_IMAGES_PER_REQUEST + 1)},
            f"the limit is {MAX_IMAGES_PER_REQUEST} per request",
        ),
        ({"images_path": ["iVBORw0KGgo="]}, r"images_path\[0\]: must be an object"),
        ({"images_path": [{"image_path": 5}]}, r"images_path\[0\].image_path: must be a non-empty string"),
        ({"images_path": [{"image_path": "a", "mask": "b"}]}, r"unknown field 'mask' in images_path\[0\]"),
        ({"images_path": [{"image_path": "a"}], "prompt": "x"}, "unknown field 'prompt'"),
        ({"images_path": [{"image_path": "a"}], "fps": 0}, "fps: must be between 1 and 60"),
        (
            {"images_path": [{"image_path": "a"}], "noise_aug_strength": 2},
            "noise_aug_strength: must be between",
        ),
    ],
)
def test_image2video_refusals(body: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        parse_image2video(body)
