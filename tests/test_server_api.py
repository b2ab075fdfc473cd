"""The HTTP API in-process on the built-in tiny models: answers, error bodies, inputs, auth, metrics."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image
from server_support import OPEA_SDINPUTS_FIELDS, assert_error, b64, decode_png, png_bytes

from opea_media.media.images import MAX_INPUT_PIXELS
from opea_media.params import image_seed
from opea_media.server.config import MIB

FAST = {"num_inference_steps": 2}


@pytest.fixture
async def t2i(server_client, server_tiny_t2i) -> TestClient:  # type: ignore[no-untyped-def]
    return await server_client(server_tiny_t2i, service="text2image")


@pytest.fixture
async def i2v(server_client, server_tiny_i2v) -> TestClient:  # type: ignore[no-untyped-def]
    return await server_client(server_tiny_i2v, service="image2video", max_body_bytes=2 * MIB)


# --- health and the happy paths ------------------------------------------------------------------


async def test_health_endpoints_when_ready(t2i: TestClient) -> None:
    for path in ("/health", "/health/ready"):
        response = await t2i.get(path)
        assert response.status == 200
        body = await response.json()
        assert body["status"] == "healthy" and body["model"] == "tiny" and body["service"] == "text2image"
    live = await t2i.get("/health/live")
    assert live.status == 200 and (await live.json()) == {"status": "alive"}


async def test_text2image_returns_pngs_and_honours_the_seed(t2i: TestClient) -> None:
    request = {"prompt": "a red fox", "num_images_per_prompt": 2, "seed": 11, **FAST}
    response = await t2i.post("/v1/text2image", json=request)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["status"] == "success" and body["message"].startswith("Generated 2 images")
    assert body["seed"] == 11 and body["seeds"] == [11, 12]
    assert (body["width"], body["height"], body["model"]) == (64, 64, "tiny")
    images = [decode_png(text) for text in body["images"]]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert images[0].text["seed"] == "11" and images[1].text["seed"] == "12"  # type: ignore[attr-defined]
    assert images[0].text["prompt"] == "a red fox"  # type: ignore[attr-defined]

    again = await (await t2i.post("/v1/text2image", json=request)).json()
    assert np.array_equal(np.asarray(decode_png(again["images"][1])), np.asarray(images[1]))
    single = {**request, "num_images_per_prompt": 1, "seed": 12}
    alone = await (await t2i.post("/v1/text2image", json=single)).json()
    # The second image is seed 12's: alone it is the same picture (batched matmuls may round differently).
    diff = np.asarray(decode_png(alone["images"][0]), dtype=np.int16) - np.asarray(images[1], dtype=np.int16)
    assert np.abs(diff).max() <= 2


async def test_a_random_seed_is_reported(t2i: TestClient) -> None:
    body = await (await t2i.post("/v1/text2image", json={"prompt": "x", **FAST})).json()
    assert isinstance(body["seed"], int) and body["seeds"] == [body["seed"]]


async def test_opea_client_sending_every_field_as_null_is_served(t2i: TestClient) -> None:
    request = {field: None for field in OPEA_SDINPUTS_FIELDS} | {"prompt": "a cat", "num_inference_steps": 2}
    response = await t2i.post("/v1/text2image", json=request)
    assert response.status == 200, await response.text()
    assert len((await response.json())["images"]) == 1


async def test_image2video_one_clip_per_image_from_base64_and_data_uri(i2v: TestClient) -> None:
    request = {
        "images_path": [
            {"image_path": b64(png_bytes())},
            {"image_path": "data:image/png;base64," + b64(png_bytes(mode="RGBA"))},
        ],
        "num_frames": 3,
        "num_inference_steps": 2,
        "seed": 5,
    }
    response = await i2v.post("/v1/image2video", json=request)
    assert response.status == 200, await response.text()
    body = await response.json()
    assert body["status"] == "success" and body["frames_per_clip"] == [3, 3]
    assert body["seed"] == 5 and body["seeds"] == [image_seed(5, 0), image_seed(5, 1)]
    assert body["fps"] == 7 and body["message"].startswith("Generated 2 clips (6 frames)")
    frames = [decode_png(text) for text in body["frames"]]
    assert len(frames) == 6 and {frame.size for frame in frames} == {(body["width"], body["height"])}


async def test_a_large_image_in_the_body_is_served(i2v: TestClient) -> None:
    noise = np.random.default_rng(0).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="PNG")
    assert len(buffer.getvalue()) > 500_000  # a body far over the inline-parsing size
    request = {"images_path": [{"image_path": b64(buffer.getvalue())}], "num_frames": 2, **FAST}
    response = await i2v.post("/v1/image2video", json=request)
    assert response.status == 200, await response.text()
    assert (await response.json())["frames_per_clip"] == [2]


async def test_image2video_fetches_a_url_when_private_urls_are_allowed(
    server_client,
    server_tiny_i2v,
    aiohttp_server,  # type: ignore[no-untyped-def]
) -> None:
    hits: list[str] = []

    async def image(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=png_bytes(), content_type="image/png")

    source = web.Application()
    source.router.add_get("/cat.png", image)
    server: TestServer = await aiohttp_server(source, host="127.0.0.1")
    client = await server_client(server_tiny_i2v, service="image2video", allow_private_urls=True)
    request = {
        "images_path": [{"image_path": f"http://127.0.0.1:{server.port}/cat.png"}],
        "num_frames": 2,
        **FAST,
    }
    response = await client.post("/v1/image2video", json=request)
    assert response.status == 200, await response.text()
    assert (await response.json())["frames_per_clip"] == [2] and hits == ["/cat.png"]


# --- every error has the spec's body --------------------------------------------------------------


async def test_aiohttp_own_errors_have_the_json_body(t2i: TestClient) -> None:
    await assert_error(await t2i.get("/nope"), 404, "no such endpoint: /nope")
    response = await t2i.get("/v1/text2image")
    await assert_error(response, 405, "use POST")
    assert response.headers["Allow"] == "POST"
    await assert_error(await t2i.post("/v1/image2video", json={}), 404)  # the other service's route


async def test_body_over_the_limit_is_413(i2v: TestClient) -> None:
    response = await i2v.post(
        "/v1/image2video", data=b"{" + b" " * (2 * MIB), headers={"Content-Type": "application/json"}
    )
    await assert_error(response, 413, "larger than the 2 MiB limit")


@pytest.mark.parametrize(
    ("data", "content_type", "status", "fragment"),
    [
        (b'{"prompt": "x",', "application/json", 400, "not valid JSON"),
        (b"", "application/json", 400, "the request body is empty"),
        (b'["a cat"]', "application/json", 400, "must be a JSON object, not an array"),
        (b'{"prompt": "x", "guidance_scale": NaN}', "application/json", 400, "NaN is not a JSON number"),
        (b"\xff\xfe\x00", "application/json", 400, "not"),
        (b'{"prompt": "' + b"x" * 100_000, "application/json", 400, "not valid JSON"),  # parsed off the loop
        (b'{"prompt": "x"}', "text/plain", 415, "send the request as JSON"),
        (b"prompt=x", "application/x-www-form-urlencoded", 415, "application/x-www-form-urlencoded"),
    ],
)
async def test_malformed_bodies(
    t2i: TestClient, data: bytes, content_type: str, status: int, fragment: str
) -> None:
    response = await t2i.post("/v1/text2image", data=data, headers={"Content-Type": content_type})
    await assert_error(response, status, fragment)


async def test_invalid_fields_are_400_naming_the_field(t2i: TestClient) -> None:
    cases = [
        ({"prompt": "x", "lora_weight_name_or_path": "a/lora"}, "LoRA weights are not supported"),
        ({"prompt": "x", "sampler": "euler"}, "unknown field 'sampler'"),
        ({"prompt": "x", "num_inference_steps": 0}, "num_inference_steps: must be between 1 and 150"),
        ({"prompt": "x", "width": 30}, "width: must be between 64 and 2048"),
    ]
    for request, fragment in cases:
        await assert_error(await t2i.post("/v1/text2image", json=request), 400, fragment)


def _bomb_png(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (the data is a few bytes of zlib)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize(
    ("image_path", "fragment"),
    [
        ("/etc/passwd", "looks like a file path; this service never reads its own files"),
        ("../secret.png", "looks like a file path"),
        ("C:\\images\\cat.png", "looks like a file path"),
        ("not base64 at all!", "is not valid base64"),
        ("data:text/plain;base64,aGVsbG8=", "expected image/*"),
        (b64(b"hello, this is not an image"), "is not a readable image"),
        (b64(_bomb_png(30_000, 30_000)), f"more than {MAX_INPUT_PIXELS} pixels"),  # Pillow's own check
        (b64(_bomb_png(5_000, 5_000)), f"the limit is {MAX_INPUT_PIXELS} pixels"),  # ours, from the header
        ("file:///etc/passwd", "the scheme 'file' is not supported"),
        ("ftp://example.com/cat.png", "the scheme 'ftp' is not supported"),
    ],
)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_bad_image_inputs_are_400(i2v: TestClient, image_path: str, fragment: str) -> None:
    request = {"images_path": [{"image_path": image_path}], "num_frames": 2, **FAST}
    body = await assert_error(await i2v.post("/v1/image2video", json=request), 400, fragment)
    assert body["detail"].startswith("images_path[0].image_path")


@pytest.mark.parametrize(
    ("host", "fragment"),
    [
        ("127.0.0.1", "loopback address"),
        ("[::1]", "loopback address"),
        ("10.0.0.1", "private address"),
        ("169.254.169.254", "link-local address"),
        ("[::ffff:127.0.0.1]", "loopback address"),
        ("2130706433", "loopback address"),  # decimal 127.0.0.1
        ("0177.0.0.1", "loopback address"),  # octal 127.0.0.1
        ("localhost", "always means this machine"),
    ],
)
async def test_urls_into_our_own_network_are_refused_before_connecting(
    i2v: TestClient,
    aiohttp_server,
    host: str,
    fragment: str,  # type: ignore[no-untyped-def]
) -> None:
    hits: list[str] = []

    async def image(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=png_bytes(), content_type="image/png")

    source = web.Application()
    source.router.add_get("/cat.png", image)
    server: TestServer = await aiohttp_server(source, host="127.0.0.1")
    request = {
        "images_path": [{"image_path": f"http://{host}:{server.port}/cat.png"}],
        "num_frames": 2,
        **FAST,
    }
    await assert_error(await i2v.post("/v1/image2video", json=request), 400, fragment)
    assert hits == []


async def test_a_redirect_out_of_the_allowed_hosts_is_refused(
    server_client,
    server_tiny_i2v,
    aiohttp_server,  # type: ignore[no-untyped-def]
) -> None:
    async def redirect(request: web.Request) -> web.Response:
        raise web.HTTPFound(f"http://localhost:{request.url.port}/cat.png")

    source = web.Application()
    source.router.add_get("/go", redirect)
    server: TestServer = await aiohttp_server(source, host="127.0.0.1")
    client = await server_client(
        server_tiny_i2v, service="image2video", allow_private_urls=True, allowed_url_hosts=("127.0.0.1",)
    )
    request = {"images_path": [{"image_path": f"http://127.0.0.1:{server.port}/go"}], **FAST}
    await assert_error(
        await client.post("/v1/image2video", json=request), 400, "redirects to http://localhost"
    )


# --- auth -----------------------------------------------------------------------------------------


async def test_api_key_guards_v1_but_not_health_or_metrics(server_client, server_tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    client = await server_client(server_tiny_t2i, api_key="s3cret")
    request = {"prompt": "x", **FAST}
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": "Basic s3cret"},
        {"Authorization": "s3cret"},
    ):
        response = await client.post("/v1/text2image", json=request, headers=headers)
        await assert_error(response, 401, "Authorization: Bearer")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    await assert_error(await client.get("/v1/unknown"), 401)  # no route probing without the key
    ok = await client.post("/v1/text2image", json=request, headers={"Authorization": "Bearer s3cret"})
    assert ok.status == 200
    assert (await client.get("/health")).status == 200
    assert (await client.get("/metrics")).status == 200


# --- request ids and metrics ------------------------------------------------------------------------


async def test_request_id_is_returned_and_a_callers_own_is_kept(t2i: TestClient) -> None:
    generated = (await t2i.get("/health")).headers["X-Request-ID"]
    assert len(generated) == 32
    assert (await t2i.get("/health", headers={"X-Request-ID": "abc-123"})).headers[
        "X-Request-ID"
    ] == "abc-123"
    for unsafe in ('x" injected="1', "x" * 200):
        assert (await t2i.get("/health", headers={"X-Request-ID": unsafe})).headers["X-Request-ID"] != unsafe


async def test_metrics_count_requests_by_endpoint_and_status(t2i: TestClient) -> None:
    await t2i.post("/v1/text2image", json={"prompt": "x", **FAST})
    await t2i.post("/v1/text2image", json={"prompt": ""})
    await t2i.get("/random/path")
    response = await t2i.get("/metrics")
    assert response.status == 200 and response.headers["Content-Type"].startswith("text/plain")
    text = await response.text()
    for line in (
        'opea_media_http_requests_total{endpoint="/v1/text2image",method="POST",status="200"} 1.0',
        'opea_media_http_requests_total{endpoint="/v1/text2image",method="POST",status="400"} 1.0',
        'opea_media_http_requests_total{endpoint="unmatched",method="GET",status="404"} 1.0',
        "opea_media_model_ready 1.0",
        "opea_media_batch_size_count 1.0",
        "opea_media_inference_duration_seconds_count 1.0",
        "opea_media_queue_wait_seconds_count 1.0",
        "opea_media_queue_depth 0.0",
    ):
        assert line in text, line
    for name in (
        "opea_media_model_load_seconds",
        "opea_media_model_convert_seconds",
        "process_resident_memory_bytes",
        "opea_media_inference_in_progress",
    ):
        assert f"\n{name} " in text, name


async def test_each_app_has_its_own_metrics(server_client, server_tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    first = await server_client(server_tiny_t2i)
    await first.get("/nope")
    second = await server_client(server_tiny_t2i)
    assert 'status="404"' not in await (await second.get("/metrics")).text()


def _zlib_level_class(png: bytes) -> int:
    """FLEVEL of the zlib stream in a PNG's first IDAT chunk: 0 fastest (level 0-1) ... 3 best (7-9)."""
    offset = 8  # the PNG signature
    while offset < len(png):
        length = int.from_bytes(png[offset : offset + 4], "big")
        kind = png[offset + 4 : offset + 8]
        if kind == b"IDAT":
            return png[offset + 9] >> 6  # the second byte of the zlib header
        offset += 12 + length
    raise AssertionError("no IDAT chunk")


async def test_served_pngs_use_the_fast_response_compression_level(t2i: TestClient, i2v: TestClient) -> None:
    from opea_media.media.images import RESPONSE_PNG_COMPRESS_LEVEL

    expected = {0: 0, 1: 0, 2: 1, 3: 1, 4: 1, 5: 1, 6: 2}.get(RESPONSE_PNG_COMPRESS_LEVEL, 3)
    image = (await (await t2i.post("/v1/text2image", json={"prompt": "x", **FAST})).json())["images"][0]
    clip = {"images_path": [{"image_path": b64(png_bytes())}], "num_frames": 2, **FAST}
    frame = (await (await i2v.post("/v1/image2video", json=clip)).json())["frames"][0]
    for served in (image, frame):
        assert _zlib_level_class(base64.b64decode(served)) == expected
