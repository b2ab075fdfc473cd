"""OPEA parity in-process: video_path MP4s served back, /v1/health_check, negative_prompt lists,
`id` in the responses, CORS off by default and on with cors_origins."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient
from server_support import assert_error, b64, png_bytes

from opea_media.media.video import probe_video
from opea_media.server.config import MIB

I2V = {"images_path": [{"image_path": b64(png_bytes())}], "num_frames": 2, "num_inference_steps": 2}


@pytest.fixture
async def i2v(server_client, server_tiny_i2v, tmp_path: Path) -> TestClient:  # type: ignore[no-untyped-def]
    return await server_client(
        server_tiny_i2v, service="image2video", max_body_bytes=2 * MIB, output_dir=tmp_path / "out"
    )


async def test_image2video_writes_each_clip_as_generated_mp4_and_serves_it(
    i2v: TestClient, tmp_path: Path
) -> None:
    request = {**I2V, "images_path": I2V["images_path"] * 2}
    response = await i2v.post("/v1/image2video", json=request, headers={"X-Request-ID": "opea-1"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["id"] == "opea-1"
    assert len(body["videos"]) == 2 and body["video_path"] == body["videos"][0]
    for k, path in enumerate(body["videos"]):
        assert path.startswith(f"/v1/outputs/opea-1-{k}-") and path.endswith("generated.mp4")
        served = await i2v.get(path)
        assert served.status == 200 and served.content_type == "video/mp4"
        saved = tmp_path / "out" / path.rsplit("/", 1)[1]
        assert await served.read() == saved.read_bytes()
        info = probe_video(saved)
        assert (info.frames, info.width, info.height) == (2, body["width"], body["height"])


async def test_an_unknown_or_traversing_output_name_is_404(i2v: TestClient) -> None:
    for path in ("/v1/outputs/nope-generated.mp4", "/v1/outputs/..%2Fsecret", "/v1/outputs/.probe"):
        await assert_error(await i2v.get(path), 404)


async def test_opea_health_check_as_opea_answers_it(i2v: TestClient) -> None:
    response = await i2v.get("/v1/health_check")
    assert response.status == 200
    assert await response.json() == {
        "Service Title": "opea_service@image2video",
        "Version": "1.5",
        "Service Description": "OPEA Microservice Infrastructure",
    }


async def test_negative_prompt_takes_a_list_and_the_answer_has_an_id(server_client, server_tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    t2i = await server_client(server_tiny_t2i, service="text2image")
    request = {"prompt": "a fox", "negative_prompt": ["blurry", "dark"], "num_inference_steps": 2, "seed": 3}
    response = await t2i.post("/v1/text2image", json=request)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["id"] == response.headers["X-Request-ID"]
    from server_support import decode_png

    assert decode_png(body["images"][0]).text["negative_prompt"] == "blurry, dark"  # type: ignore[attr-defined]
    bad = await t2i.post("/v1/text2image", json={"prompt": "x", "negative_prompt": ["ok", 3]})
    await assert_error(bad, 400, "negative_prompt")


async def test_cors_is_off_by_default(server_client, server_tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    t2i = await server_client(server_tiny_t2i, service="text2image")
    response = await t2i.get("/v1/health_check", headers={"Origin": "http://localhost:5173"})
    assert "Access-Control-Allow-Origin" not in response.headers
    preflight = await t2i.options(
        "/v1/text2image", headers={"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST"}
    )
    assert preflight.status == 405 and "Access-Control-Allow-Origin" not in preflight.headers


async def test_cors_origins_answer_preflights_and_mark_answers(server_client, server_tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    ui = "http://localhost:5173"
    t2i = await server_client(server_tiny_t2i, service="text2image", cors_origins=(ui,), api_key="k")
    headers = {
        "Origin": ui,
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type",
    }
    preflight = await t2i.options("/v1/text2image", headers=headers)  # no key: preflights carry none
    assert preflight.status == 204
    assert preflight.headers["Access-Control-Allow-Origin"] == ui
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
    assert preflight.headers["Access-Control-Allow-Headers"] == "content-type"
    response = await t2i.post(
        "/v1/text2image",
        json={"prompt": "x", "num_inference_steps": 2},
        headers={"Origin": ui, "Authorization": "Bearer k"},
    )
    assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == ui
    other = await t2i.options("/v1/text2image", headers={**headers, "Origin": "http://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
