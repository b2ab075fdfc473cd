"""GET /openapi.json: a valid OpenAPI 3.1 document whose fields are OPEA's and whose limits and
defaults are params.py's.

The document is generated from the same pydantic wire models the handlers validate with; these
tests pin its fields to OPEA's request types, its limits to the constants in params.py (so a limit
cannot change in one place only), and check, at every boundary it states, that validation agrees.
"""

from __future__ import annotations

from dataclasses import fields
from typing import Any

import jsonschema
import pytest
from aiohttp.test_utils import TestClient
from openapi_spec_validator import validate
from server_support import (
    IMAGE2VIDEO_FIELDS,
    OPEA_IMAGE_PATH_FIELDS,
    OPEA_SDINPUTS_FIELDS,
    GatedText2Image,
    assert_error,
    fake_handle,
    parse_image2video,
    parse_text2image,
)

from opea_media.errors import InvalidInput
from opea_media.media.images import MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MIN_INPUT_SIDE
from opea_media.params import (
    DECODE_CHUNK_SIZE,
    FPS,
    GUIDANCE_SCALE,
    IMAGE_SIDE,
    MAX_IMAGES_PER_REQUEST,
    MOTION_BUCKET_ID,
    NOISE_AUG_STRENGTH,
    NUM_FRAMES,
    NUM_IMAGES,
    PROMPT_MAX_CHARS,
    SEED,
    STEPS,
    Image2VideoParams,
    Limit,
    Text2ImageParams,
)
from opea_media.server.config import MIB, ServerConfig
from opea_media.server.openapi import openapi_document

# Written out here on purpose: the document must show exactly these params.py objects.
TEXT2IMAGE_LIMITS: dict[str, tuple[Limit, bool]] = {
    "num_images_per_prompt": (NUM_IMAGES, True),
    "num_inference_steps": (STEPS, True),
    "guidance_scale": (GUIDANCE_SCALE, False),
    "height": (IMAGE_SIDE, True),
    "width": (IMAGE_SIDE, True),
    "seed": (SEED, True),
}
IMAGE2VIDEO_LIMITS: dict[str, tuple[Limit, bool]] = {
    "num_frames": (NUM_FRAMES, True),
    "fps": (FPS, True),
    "motion_bucket_id": (MOTION_BUCKET_ID, True),
    "noise_aug_strength": (NOISE_AUG_STRENGTH, False),
    "decode_chunk_size": (DECODE_CHUNK_SIZE, True),
    "num_inference_steps": (STEPS, True),
    "seed": (SEED, True),
    "height": (IMAGE_SIDE, True),
    "width": (IMAGE_SIDE, True),
}
SERVICES = {
    "text2image": ("Text2ImageRequest", OPEA_SDINPUTS_FIELDS, TEXT2IMAGE_LIMITS, Text2ImageParams),
    "image2video": ("Image2VideoRequest", IMAGE2VIDEO_FIELDS, IMAGE2VIDEO_LIMITS, Image2VideoParams),
}


SERVICE_PATHS = {
    "text2image": {
        "/v1/text2image",
        "/v1/images/generations",
        "/v1/images/edits",
        "/v1/models",
        "/v1/models/{model}",
        *(
            f"/sdapi/v1/{name}"
            for name in (
                "txt2img",
                "img2img",
                "progress",
                "interrupt",
                "options",
                "sd-models",
                "samplers",
                "schedulers",
                "upscalers",
                "latent-upscale-modes",
                "sd-vae",
                "sd-modules",
                "scripts",
            )
        ),
    },
    "image2video": {"/v1/image2video"},
}


def _document(service: str, **options: Any) -> dict[str, Any]:
    return openapi_document(ServerConfig(service=service, **options))  # type: ignore[arg-type]


def _shown(schema: dict[str, Any]) -> dict[str, Any]:
    """A nullable property's non-null branch (pydantic writes `X | None` as anyOf [X, null]); for
    "X or a list of X" (negative_prompt), the X."""
    branches = [b for b in schema.get("anyOf", [schema]) if b.get("type") != "null"]
    assert len(branches) == 1 or branches[1] == {"type": "array", "items": branches[0]}, schema
    return {**schema, **branches[0]}


def _nullable(schema: dict[str, Any]) -> bool:
    return any(b.get("type") == "null" for b in schema.get("anyOf", []))


def _validator(document: dict[str, Any], name: str) -> jsonschema.Draft202012Validator:
    """A validator for one component schema, resolving its $refs within the document."""
    return jsonschema.Draft202012Validator({**document, "$ref": f"#/components/schemas/{name}"})


@pytest.mark.parametrize("service", SERVICES)
@pytest.mark.parametrize("api_key", [None, "s3cret"])
def test_the_document_is_valid_openapi_3_1(service: str, api_key: str | None) -> None:
    document = _document(service, api_key=api_key)
    validate(document)  # raises on any violation of the OpenAPI 3.1 schema
    assert document["openapi"] == "3.1.0"
    paths = set(document["paths"])
    common = {"/health", "/health/ready", "/health/live", "/metrics", "/openapi.json"}
    common |= {"/v1/health_check", "/v1/outputs/{name}"}
    common |= {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/events"}
    common |= {"/", "/static/{name}"}  # the web page and its files
    assert paths == common | SERVICE_PATHS[service]
    operation = document["paths"][f"/v1/{service}"]["post"]
    assert ("401" in operation["responses"]) is (api_key is not None)
    assert ("security" in operation) is (api_key is not None)


@pytest.mark.parametrize("service", SERVICES)
def test_fields_limits_and_defaults_are_those_of_params(service: str) -> None:
    name, accepted, limits, params_type = SERVICES[service]
    schema = _document(service)["components"]["schemas"][name]
    assert set(schema["properties"]) == set(accepted)  # every field OPEA's clients send, no other
    assert schema["additionalProperties"] is False
    defaults = {f.name: f.default for f in fields(params_type)}
    for field, (limit, integer) in limits.items():
        shown = _shown(schema["properties"][field])
        assert _nullable(schema["properties"][field]), field
        assert shown["type"] == ("integer" if integer else "number"), field
        assert (shown["minimum"], shown["maximum"]) == (limit.min, limit.max), field
        assert shown.get("multipleOf") == limit.multiple_of, field
        assert shown["default"] == defaults[field], field
        if defaults[field] is None:
            assert "Null or absent: " in shown["description"], field
    for number in limits:  # exactly the numeric fields of params
        assert number in accepted


def test_text_and_image_limits() -> None:
    t2i = _document("text2image")["components"]["schemas"]
    prompt = t2i["Text2ImageRequest"]["properties"]["prompt"]
    assert prompt["type"] == "string" and prompt["maxLength"] == PROMPT_MAX_CHARS
    assert t2i["Text2ImageRequest"]["required"] == ["prompt"]
    negative = t2i["Text2ImageRequest"]["properties"]["negative_prompt"]
    assert _nullable(negative) and _shown(negative)["maxLength"] == PROMPT_MAX_CHARS
    assert negative["anyOf"][1]["items"]["maxLength"] == PROMPT_MAX_CHARS  # OPEA's List[str] too
    assert t2i["Text2ImageRequest"]["properties"]["lora_weight_name_or_path"]["type"] == "null"
    image_input = _document("image2video")["components"]["schemas"]["ImageInput"]
    assert tuple(image_input["properties"]) == OPEA_IMAGE_PATH_FIELDS

    i2v = _document("image2video", max_body_bytes=3 * MIB)
    images = i2v["components"]["schemas"]["Image2VideoRequest"]["properties"]["images_path"]
    assert (images["minItems"], images["maxItems"]) == (1, MAX_IMAGES_PER_REQUEST)
    image_path = i2v["components"]["schemas"]["ImageInput"]["properties"]["image_path"]
    assert (image_path["x-max-bytes"], image_path["x-max-pixels"], image_path["x-min-side"]) == (
        MAX_INPUT_BYTES,
        MAX_INPUT_PIXELS,
        MIN_INPUT_SIDE,
    )
    assert i2v["paths"]["/v1/image2video"]["post"]["requestBody"]["x-max-body-bytes"] == 3 * MIB


@pytest.mark.parametrize("service", SERVICES)
def test_every_error_response_has_the_error_body_and_503_has_retry_after(service: str) -> None:
    document = _document(service, api_key="k")
    operation = document["paths"][f"/v1/{service}"]["post"]["responses"]
    assert set(operation) == {"200", "400", "401", "408", "413", "415", "500", "503", "504"}
    for status, response in operation.items():
        if status == "200":
            continue
        schema = response["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorBody"}
        assert "X-Request-ID" in response["headers"]
    assert "Retry-After" in operation["503"]["headers"]
    assert "WWW-Authenticate" in operation["401"]["headers"]
    error = _validator(document, "ErrorBody")
    error.validate({"detail": "prompt: is required", "status_code": 400})
    with pytest.raises(jsonschema.ValidationError):
        error.validate({"detail": "x", "status_code": 400, "traceback": "..."})


def _boundary_values(limit: Limit, integer: bool) -> tuple[list[float], list[float]]:
    """(values the document allows, values it refuses) at each end of a limit."""
    step = limit.multiple_of or (1 if integer else 1e-6)
    inside = [limit.min, limit.max]
    outside = [limit.min - step, limit.max + step]
    if limit.multiple_of:
        outside.append(limit.min + 1)
    return inside, outside


@pytest.mark.parametrize("service", SERVICES)
def test_the_parser_agrees_with_the_document_at_every_stated_boundary(service: str) -> None:
    name, _accepted, _limits, _params = SERVICES[service]
    document = _document(service)
    schema = _validator(document, name)
    base: dict[str, Any] = (
        {"prompt": "a cat"} if service == "text2image" else {"images_path": [{"image_path": "aGk="}]}
    )
    parse = parse_text2image if service == "text2image" else parse_image2video
    properties = document["components"]["schemas"][name]["properties"]
    checked = 0
    for field, nullable in properties.items():
        if "anyOf" not in nullable or "minimum" not in _shown(nullable):
            continue
        shown = _shown(nullable)
        integer = shown["type"] == "integer"
        limit = Limit(shown["minimum"], shown["maximum"], shown.get("multipleOf"))
        inside, outside = _boundary_values(limit, integer)
        for value in inside:
            body = {**base, field: int(value) if integer else value}
            schema.validate(body)
            parse(body)
            checked += 1
        for value in outside:
            body = {**base, field: int(value) if integer else value}
            assert not schema.is_valid(body), body
            with pytest.raises(InvalidInput, match=field):
                parse(body)
            checked += 1
    assert checked >= 20


def test_prompt_text_rules_agree_with_the_document() -> None:
    schema = _validator(_document("text2image"), "Text2ImageRequest")
    for prompt in ["a cat", " x ", "\x07 bell", "é" * PROMPT_MAX_CHARS]:
        schema.validate({"prompt": prompt})
        parse_text2image({"prompt": prompt})
    for prompt in ["", "   ", "\t\n\u3000\x1c", "a\x00b", "x" * (PROMPT_MAX_CHARS + 1)]:
        assert not schema.is_valid({"prompt": prompt}), repr(prompt)
        with pytest.raises(InvalidInput, match="prompt"):
            parse_text2image({"prompt": prompt})


async def test_each_service_serves_its_own_document(server_client: Any) -> None:
    for service in SERVICES:
        client: TestClient = await server_client(
            fake_handle(GatedText2Image()), service=service, wait_ready=False, max_body_bytes=5 * MIB
        )
        response = await client.get("/openapi.json")
        assert response.status == 200 and response.content_type == "application/json"
        assert response.headers["X-Request-ID"]
        served = await response.json()
        assert served == _document(service, max_body_bytes=5 * MIB)
        await assert_error(await client.post("/openapi.json"), 405, "use GET")
