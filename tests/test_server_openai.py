"""The OpenAI Images API in-process: answers, URLs, formats, model names, error shape and retry
headers. The real openai SDK talks to a real process in tests/integration/test_clients.py."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from server_support import GatedText2Image, fake_handle

FAST = {"num_inference_steps": 2}


@pytest.fixture
async def t2i(server_client, server_tiny_t2i, tmp_path: Path) -> TestClient:  # type: ignore[no-untyped-def]
    return await server_client(server_tiny_t2i, service="text2image", output_dir=tmp_path / "out")


def _image(data: dict[str, Any]) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(data["b64_json"], validate=True)))
    image.load()
    return image


async def _openai_error(
    response: Any, status: int, fragment: str = "", param: str | None = None
) -> dict[str, Any]:
    assert response.status == status, await response.text()
    body = await response.json()
    assert set(body) == {"error", "detail", "status_code"} and body["status_code"] == status
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert fragment in body["error"]["message"] and body["detail"] == body["error"]["message"]
    assert body["error"]["param"] == param
    return body


async def test_generations_answer_b64_png_by_default(t2i: TestClient) -> None:
    request = {"prompt": "a fox", "n": 2, "size": "64x64", "model": "gpt-image-1", "seed": 5, **FAST}
    response = await t2i.post("/v1/images/generations", json=request)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"created", "data", "output_format", "size"}
    assert (body["output_format"], body["size"], len(body["data"])) == ("png", "64x64", 2)
    first = _image(body["data"][0])
    assert first.format == "PNG" and first.size == (64, 64)
    assert "Seed: 5" in first.text["parameters"]  # type: ignore[attr-defined]


async def test_auto_size_quality_and_ignored_fields_are_accepted(t2i: TestClient) -> None:
    request = {
        "prompt": "a fox", "size": "auto", "quality": "low", "background": "auto", "style": "vivid",
        "user": "u1", "moderation": "low", "safety_identifier": "s", "model": "tiny", **FAST,
    }  # fmt: skip
    response = await t2i.post("/v1/images/generations", json=request)
    assert response.status == 200, await response.text()
    assert (await response.json())["size"] == "64x64"  # the tiny model's native size


async def test_url_answers_point_to_the_stored_file(t2i: TestClient) -> None:
    request = {"prompt": "a fox", "response_format": "url", "output_format": "jpeg", "output_compression": 60}
    body = await (await t2i.post("/v1/images/generations", json={**request, **FAST})).json()
    url = body["data"][0]["url"]
    assert url.startswith(f"http://{t2i.host}:{t2i.port}/v1/outputs/") and url.endswith(".jpeg")
    served = await t2i.get(url.split(str(t2i.port), 1)[1])
    assert served.status == 200 and served.content_type == "image/jpeg"
    assert Image.open(io.BytesIO(await served.read())).format == "JPEG"
    # dall-e-* without response_format: a URL, as OpenAI answers those models.
    dalle = await (
        await t2i.post("/v1/images/generations", json={"prompt": "x", "model": "dall-e-3", **FAST})
    ).json()
    assert "url" in dalle["data"][0] and "b64_json" not in dalle["data"][0]


async def test_public_url_is_the_base_of_handed_out_urls(
    server_client, server_tiny_t2i, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    t2i = await server_client(
        server_tiny_t2i, service="text2image", output_dir=tmp_path, public_url="https://img.example/sd/"
    )
    body = await (
        await t2i.post("/v1/images/generations", json={"prompt": "x", "response_format": "url", **FAST})
    ).json()
    assert body["data"][0]["url"].startswith("https://img.example/sd/v1/outputs/")


async def test_webp_output(t2i: TestClient) -> None:
    body = await (
        await t2i.post("/v1/images/generations", json={"prompt": "x", "output_format": "webp", **FAST})
    ).json()
    assert body["output_format"] == "webp" and _image(body["data"][0]).format == "WEBP"


@pytest.mark.parametrize(
    ("request_body", "param", "fragment"),
    [
        ({"prompt": "x", "size": "100x100"}, "size", "multiple of 8"),
        ({"prompt": "x", "size": "big"}, "size", "'auto' or WIDTHxHEIGHT"),
        ({"prompt": "x", "model": "midjourney"}, "model", "unknown model 'midjourney'"),
        ({"prompt": "x", "n": 9}, "n", "between 1 and 8"),
        ({"prompt": "x", "background": "transparent"}, "background", "input should be"),
        ({"prompt": "x", "stream": "yes"}, "stream", ""),
        ({"prompt": ""}, "prompt", "must not be empty"),
    ],
)
async def test_refusals_have_openais_error_shape(
    t2i: TestClient, request_body: dict[str, Any], param: str, fragment: str
) -> None:
    response = await t2i.post("/v1/images/generations", json=request_body)
    body = await _openai_error(response, 400, fragment, param)
    assert body["error"]["type"] == "invalid_request_error"
    assert response.headers["x-should-retry"] == "false"


async def test_models_list_and_retrieve(t2i: TestClient) -> None:
    listed = await (await t2i.get("/v1/models")).json()
    assert listed["object"] == "list" and [m["id"] for m in listed["data"]] == ["tiny"]
    assert listed["data"][0]["object"] == "model" and isinstance(listed["data"][0]["created"], int)
    assert (await (await t2i.get("/v1/models/tiny")).json())["id"] == "tiny"
    missing = await t2i.get("/v1/models/org/other-model")
    body = await _openai_error(missing, 404, "no model 'org/other-model'")
    assert body["error"]["code"] == "not_found"


async def test_a_500_says_do_not_retry_and_a_503_says_when(server_client) -> None:  # type: ignore[no-untyped-def]
    model = GatedText2Image(fail=RuntimeError("boom"))
    model.gate.set()
    t2i = await server_client(fake_handle(model), service="text2image")
    response = await t2i.post("/v1/images/generations", json={"prompt": "x"})
    body = await _openai_error(response, 500)
    assert body["error"]["type"] == "server_error" and response.headers["x-should-retry"] == "false"

    loading = await server_client(
        fake_handle(GatedText2Image(), gate=__import__("threading").Event()),
        service="text2image",
        wait_ready=False,
    )
    busy = await loading.post("/v1/images/generations", json={"prompt": "x"})
    await _openai_error(busy, 503, "loading")
    assert busy.headers["x-should-retry"] == "true" and int(busy.headers["Retry-After"]) > 0


async def test_the_opea_routes_keep_their_error_shape(t2i: TestClient) -> None:
    response = await t2i.post("/v1/text2image", json={"prompt": ""})
    assert set(await response.json()) == {"detail", "status_code"}
    assert "x-should-retry" not in response.headers


async def test_the_api_key_as_bearer_or_basic_password(server_client, server_tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    t2i = await server_client(server_tiny_t2i, service="text2image", api_key="s3cret")
    assert (await t2i.get("/v1/models")).status == 401
    assert (await t2i.get("/v1/models", headers={"Authorization": "Bearer s3cret"})).status == 200
    basic = base64.b64encode(b"anyone:s3cret").decode()
    assert (await t2i.get("/v1/models", headers={"Authorization": f"Basic {basic}"})).status == 200
    wrong = base64.b64encode(b"s3cret:nope").decode()
    for header in (f"Basic {wrong}", "Basic ", "Basic", "Basic !!!", "Bearer "):
        response = await t2i.get("/v1/models", headers={"Authorization": header})
        await _openai_error(response, 401, "API key")
    assert (await t2i.get("/v1/health_check")).status == 200  # OPEA's probe stays open


def _events(text: str) -> list[tuple[str, dict[str, Any]]]:
    import json

    events = []
    for block in text.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        events.append((lines["event"], json.loads(lines["data"])))
    return events


async def test_stream_sends_partial_images_then_completed(t2i: TestClient) -> None:
    request = {"prompt": "a fox", "stream": True, "partial_images": 2, "num_inference_steps": 4, "seed": 1}
    response = await t2i.post("/v1/images/generations", json=request)
    assert response.status == 200 and response.content_type == "text/event-stream"
    events = _events(await response.text())
    kinds = [kind for kind, _ in events]
    assert kinds == ["image_generation.partial_image"] * 2 + ["image_generation.completed"], kinds
    assert [data["partial_image_index"] for _, data in events[:2]] == [0, 1]
    for kind, data in events:
        assert data["type"] == kind and data["size"] == "64x64" and data["output_format"] == "png"
        assert _image(data).size == (64, 64)
    final = await (await t2i.post("/v1/images/generations", json={**request, "stream": False})).json()
    assert final["data"][0]["b64_json"] == events[-1][1]["b64_json"]  # previews leave the pixels alone


async def test_a_stream_refused_before_it_starts_is_an_ordinary_error(t2i: TestClient) -> None:
    response = await t2i.post("/v1/images/generations", json={"prompt": "x", "stream": True, "size": "1x1"})
    await _openai_error(response, 400, "", "size")


def _png(size: tuple[int, int] = (96, 64), mode: str = "RGB", color: Any = (200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _form(fields: dict[str, str], files: list[tuple[str, bytes]]) -> Any:
    from aiohttp import FormData

    form = FormData()
    for name, value in fields.items():
        form.add_field(name, value)
    for name, data in files:
        form.add_field(name, data, filename="x.png", content_type="image/png")
    return form


async def test_edits_take_one_image_or_several_and_a_mask(t2i: TestClient) -> None:
    fields = {"prompt": "a fox", "n": "2", "num_inference_steps": "4", "strength": "0.5", "seed": "3"}
    one = await t2i.post("/v1/images/edits", data=_form(fields, [("image", _png())]))
    assert one.status == 200, await one.text()
    body = await one.json()
    assert body["size"] == "80x64" and len(body["data"]) == 2  # the input's shape, at the model's area
    several = await t2i.post(
        "/v1/images/edits",
        data=_form(
            {**fields, "n": "1", "size": "64x64"}, [("image[]", _png()), ("image[]", _png(color=(0, 90, 0)))]
        ),
    )
    assert several.status == 200, await several.text()
    assert [(_image(d).size) for d in (await several.json())["data"]] == [(64, 64), (64, 64)]
    mask = _png((96, 64), "RGBA", (0, 0, 0, 0))  # fully transparent: repaint all
    masked = await t2i.post("/v1/images/edits", data=_form(fields, [("image", _png()), ("mask", mask)]))
    assert masked.status == 200, await masked.text()


async def test_edit_refusals(t2i: TestClient) -> None:
    no_image = await t2i.post("/v1/images/edits", data=_form({"prompt": "x"}, []))
    await _openai_error(no_image, 400, "is required", "image")
    bad_n = await t2i.post("/v1/images/edits", data=_form({"prompt": "x", "n": "2x"}, [("image", _png())]))
    await _openai_error(bad_n, 400, "must be an integer", "n")
    bad_strength = await t2i.post(
        "/v1/images/edits", data=_form({"prompt": "x", "strength": "2"}, [("image", _png())])
    )
    await _openai_error(bad_strength, 400, "between 0 and 1", "strength")
    not_an_image = await t2i.post(
        "/v1/images/edits", data=_form({"prompt": "x"}, [("image", b"GIF89a-junk")])
    )
    await _openai_error(not_an_image, 400, "image 1")
    as_json = await t2i.post("/v1/images/edits", json={"prompt": "x"})
    await _openai_error(as_json, 415, "multipart/form-data")


async def test_edit_stream(t2i: TestClient) -> None:
    fields = {
        "prompt": "a fox",
        "num_inference_steps": "8",
        "strength": "0.5",
        "stream": "true",
        "partial_images": "1",
    }
    response = await t2i.post("/v1/images/edits", data=_form(fields, [("image", _png())]))
    assert response.status == 200, await response.text()
    kinds = [kind for kind, _ in _events(await response.text())]
    assert kinds == ["image_edit.partial_image", "image_edit.completed"]
