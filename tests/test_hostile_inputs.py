"""Hostile input through the HTTP API, on the tiny models: each case asserts the status and the body.

Images (malformed base64 and data URIs, truncated, corrupt, bombs, odd sizes and modes), prompts,
JSON shapes and numbers, content types, oversized and compressed bodies, slow clients. Image URLs
(SSRF) are in tests/test_hostile_urls.py. Cases already proven elsewhere are not repeated here:
docs/reliability.md maps each to its test.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import json
import socket
import struct
import time
import zlib
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from server_support import assert_error, b64, png_bytes

from opea_media.media.images import MAX_INPUT_BYTES, MAX_INPUT_PIXELS, MIN_INPUT_SIDE
from opea_media.params import PROMPT_MAX_CHARS
from opea_media.server.config import MIB

FAST = {"num_inference_steps": 2}
CLIP = {"num_frames": 2, "num_inference_steps": 2}


@pytest.fixture
async def t2i(server_client: Any, server_tiny_t2i: Any) -> TestClient:
    return await server_client(server_tiny_t2i, service="text2image", max_body_bytes=MIB)


@pytest.fixture
async def i2v(server_client: Any, server_tiny_i2v: Any) -> TestClient:
    return await server_client(server_tiny_i2v, service="image2video")


def encode(image: Image.Image, fmt: str, **options: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def zeros_png(width: int, height: int) -> bytes:
    """A real, valid grey PNG of width x height zeros: megapixels in a few kilobytes."""
    row = b"\x00" + b"\x00" * width
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(height)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", data) + _chunk(b"IEND", b"")


def gif_bomb(width: int, height: int) -> bytes:
    """A GIF whose logical screen and only frame claim width x height pixels."""
    screen = b"GIF89a" + struct.pack("<HHBBB", width, height, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
    return screen + frame + b"\x3b"


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (64, 48), (i * 80, 0, 0)) for i in range(3)]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


def sixteen_bit_png() -> bytes:
    ramp = np.linspace(0, 65535, 64 * 64, dtype=np.uint16).reshape(64, 64)
    return encode(Image.fromarray(ramp), "PNG")


def palette_png(transparent: bool) -> bytes:
    image = Image.new("RGB", (64, 64), (10, 200, 30)).convert("P", palette=Image.Palette.ADAPTIVE)
    return encode(image, "PNG", transparency=0) if transparent else encode(image, "PNG")


# --- images that should be served ----------------------------------------------------------------

SERVED_IMAGES = {
    "cmyk jpeg": lambda: encode(Image.new("CMYK", (64, 64), (0, 120, 200, 10)), "JPEG"),
    "16-bit grey png": sixteen_bit_png,
    "palette png": lambda: palette_png(transparent=False),
    "palette png with transparency": lambda: palette_png(transparent=True),
    "rgba png": lambda: png_bytes(mode="RGBA"),
    "grey+alpha png": lambda: encode(Image.new("LA", (64, 64), (90, 40)), "PNG"),
    "animated gif": animated_gif,
    "bmp": lambda: encode(Image.new("RGB", (64, 64), (1, 2, 3)), "BMP"),
    "webp with alpha": lambda: encode(Image.new("RGBA", (64, 64), (1, 2, 3, 4)), "WEBP"),
    f"smallest allowed ({MIN_INPUT_SIDE}x{MIN_INPUT_SIDE})": lambda: png_bytes(
        (MIN_INPUT_SIDE, MIN_INPUT_SIDE)
    ),
    "1x4096 strip is refused, 8x2048 is not": lambda: png_bytes((8, 2048)),
}


@pytest.mark.parametrize("name", SERVED_IMAGES)
async def test_odd_but_valid_images_are_served(i2v: TestClient, name: str) -> None:
    data = SERVED_IMAGES[name]()
    for spelling in (b64(data), f"data:image/x;base64,{b64(data)}"):
        response = await i2v.post("/v1/image2video", json={"images_path": [{"image_path": spelling}], **CLIP})
        assert response.status == 200, await response.text()
        assert (await response.json())["frames_per_clip"] == [2]


async def test_an_image_at_the_pixel_limit_is_served(i2v: TestClient) -> None:
    data = zeros_png(4096, MAX_INPUT_PIXELS // 4096)  # exactly the limit, a few kB on the wire
    assert len(data) < 100_000
    response = await i2v.post("/v1/image2video", json={"images_path": [{"image_path": b64(data)}], **CLIP})
    assert response.status == 200, await response.text()


# --- images that must be refused -----------------------------------------------------------------

_PNG = png_bytes((64, 64))
_JPEG = encode(Image.new("RGB", (64, 64), (3, 4, 5)), "JPEG")
REFUSED_IMAGES: dict[str, tuple[str, str]] = {
    # name: (image_path, fragment of the detail)
    "1x1": (b64(png_bytes((1, 1))), f"each side must be at least {MIN_INPUT_SIDE} pixels"),
    "4096x1 strip": (b64(zeros_png(4096, 1)), f"each side must be at least {MIN_INPUT_SIDE} pixels"),
    "one pixel over the limit": (b64(zeros_png(4097, 4096)), f"the limit is {MAX_INPUT_PIXELS} pixels"),
    "png bomb (zlib)": (b64(zeros_png(20_000, 20_000)), "pixels"),
    "gif bomb (header)": (b64(gif_bomb(40_000, 40_000)), "pixels"),
    "truncated png": (b64(_PNG[: len(_PNG) // 2]), "truncated"),
    "truncated jpeg": (b64(_JPEG[: len(_JPEG) // 2]), "truncated"),
    "png header and garbage": (b64(_PNG[:16] + b"\x00garbage" * 20), "not a readable image"),
    "jpeg magic only": (b64(b"\xff\xd8\xff" + b"\x00" * 40), "not a readable image"),
    "tiff": (b64(encode(Image.new("RGB", (64, 64)), "TIFF")), "is a TIFF image; allowed formats are"),
    "svg": (b64(b'<svg xmlns="http://www.w3.org/2000/svg"/>'), "is a SVG image; allowed formats are"),
    "pdf": (b64(b"%PDF-1.4\n%\xe2\xe3\n1 0 obj<<>>endobj\n"), "is a PDF image"),
    "random bytes": (b64(bytes(range(256)) * 4), "is not a readable image"),
}


@pytest.mark.parametrize("name", REFUSED_IMAGES)
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
async def test_broken_and_oversized_images_are_400(i2v: TestClient, name: str) -> None:
    image_path, fragment = REFUSED_IMAGES[name]
    request = {"images_path": [{"image_path": b64(png_bytes())}, {"image_path": image_path}], **CLIP}
    body = await assert_error(await i2v.post("/v1/image2video", json=request), 400, fragment)
    assert body["detail"].startswith("images_path[1].image_path")  # the bad one is named


# --- base64 and data URIs ------------------------------------------------------------------------

_GOOD = b64(_PNG)
MALFORMED_BASE64 = {
    "bad character": ("iVBOR*w0KGgo=", "'*' at position 5 is not a base64 character"),
    "one char too many": ("iVBORw0KG", "its length or '=' padding is wrong"),
    "padding inside": ("iVBO=Rw0", "its length or '=' padding is wrong"),
    "too much padding": ("iVBORw===", "its length or '=' padding is wrong"),
    "mixed alphabets": ("ab-+cd_/", "mixes the standard and URL-safe base64 alphabets"),
    "only whitespace inside a data URI": ("data:image/png;base64,   \n ", "contains no base64 data"),
    "data URI without a comma": ("data:image/png;base64" + _GOOD, "without a ','"),
    "data URI not base64": ("data:image/png," + _GOOD, "not base64-encoded"),
    "data URI of text": ("data:text/html;base64," + _GOOD, "of type 'text/html'; expected image/*"),
    "data URI without a type": ("data:;base64," + _GOOD, "of type 'text/plain'; expected image/*"),
    "decodes to nothing": ("====", "its length or '=' padding is wrong"),
    "blank": ("   ", "must be a non-empty string"),
    "not a string": (5, "must be a non-empty string"),
    "null": (None, "must be a non-empty string"),
}


@pytest.mark.parametrize("name", MALFORMED_BASE64)
async def test_malformed_base64_and_data_uris_are_400(i2v: TestClient, name: str) -> None:
    image_path, fragment = MALFORMED_BASE64[name]
    request = {"images_path": [{"image_path": image_path}], **CLIP}
    body = await assert_error(await i2v.post("/v1/image2video", json=request), 400, fragment)
    assert body["detail"].startswith("images_path[0]")


async def test_base64_over_the_decoded_limit_is_refused_before_decoding(
    server_client: Any, server_tiny_i2v: Any
) -> None:
    client = await server_client(server_tiny_i2v, service="image2video", max_body_bytes=40 * MIB)
    too_long = "A" * ((MAX_INPUT_BYTES + 2) // 3 * 4 + 4)  # one base64 quantum over 20 MiB
    request = {"images_path": [{"image_path": too_long}], **CLIP}
    started = time.perf_counter()
    await assert_error(
        await client.post("/v1/image2video", json=request), 400, f"the limit is {MAX_INPUT_BYTES} bytes"
    )
    assert time.perf_counter() - started < 10


async def test_five_images_is_one_over_the_limit(i2v: TestClient) -> None:
    request = {"images_path": [{"image_path": _GOOD}] * 5, **CLIP}
    await assert_error(await i2v.post("/v1/image2video", json=request), 400, "the limit is 4 per request")


# --- prompts ---------------------------------------------------------------------------------------

SERVED_PROMPTS = {
    "control characters": "\x01\x02\x1b[31mred\x1b[0m\x7f\x9b\u200b\u202e",
    "emoji and scripts": "a 🦊 in Kyōto, 狐, ثعلب, лиса 👨‍👩‍👧",
    "at the length limit": "é" * PROMPT_MAX_CHARS,
    "json and markup": '{"prompt": "x"} <script>alert(1)</script> %s %n {0}',
    "surrounding blanks": "\u3000 a cat \t\n",
}


@pytest.mark.parametrize("name", SERVED_PROMPTS)
async def test_strange_but_valid_prompts_are_served(t2i: TestClient, name: str) -> None:
    prompt = SERVED_PROMPTS[name]
    response = await t2i.post("/v1/text2image", json={"prompt": prompt, "negative_prompt": prompt, **FAST})
    assert response.status == 200, await response.text()
    assert len((await response.json())["images"]) == 1


REFUSED_PROMPTS = {
    "empty": ({"prompt": ""}, "prompt: must not be empty"),
    "blank in many scripts": ({"prompt": " \t\n\r\x0b\x0c\u3000\u2028\x1c\x85"}, "prompt: must not be empty"),
    "one over the limit": (
        {"prompt": "x" * (PROMPT_MAX_CHARS + 1)},
        "is 10001 characters long; the limit is 10000",
    ),
    "NUL": ({"prompt": "a\x00b"}, "prompt: must not contain NUL characters"),
    "NUL in the negative prompt": (
        {"prompt": "a", "negative_prompt": "\x00"},
        "negative_prompt: must not contain NUL",
    ),
    "lone surrogate": ({"prompt": "a\ud800b"}, "prompt: is not valid Unicode: a lone surrogate"),
    "a number": ({"prompt": 5}, "prompt: must be a string, got int"),
    "a list": ({"prompt": ["a", "b"]}, "prompt: must be a string, got list"),
    "an object": ({"prompt": {"text": "a"}}, "prompt: must be a string, got dict"),
    "a boolean": ({"prompt": True}, "prompt: must be a string, got bool"),
}


@pytest.mark.parametrize("name", REFUSED_PROMPTS)
async def test_bad_prompts_are_400(t2i: TestClient, name: str) -> None:
    request, fragment = REFUSED_PROMPTS[name]
    # json.dumps writes a lone surrogate as the escape \ud800, as a hostile client would.
    data = json.dumps({**request, **FAST}).encode()
    response = await t2i.post("/v1/text2image", data=data, headers={"Content-Type": "application/json"})
    await assert_error(response, 400, fragment)


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b'{"prompt": "caf\xe9"}', "not UTF-8 text"),  # latin-1, not UTF-8
        (b'{"prompt": "\xc3\x28"}', "not UTF-8 text"),  # an invalid UTF-8 sequence
        # A surrogate encoded as UTF-8 (CESU-8): Python's JSON reader lets it through; the rule does not.
        (b'{"prompt": "\xed\xa0\x80"}', "prompt: is not valid Unicode: a lone surrogate"),
    ],
)
async def test_bytes_that_are_not_utf8_are_400(t2i: TestClient, data: bytes, fragment: str) -> None:
    response = await t2i.post("/v1/text2image", data=data, headers={"Content-Type": "application/json"})
    await assert_error(response, 400, fragment)


# --- JSON shapes and numbers ----------------------------------------------------------------------

REFUSED_JSON: dict[str, tuple[bytes, str]] = {
    "Infinity": (b'{"prompt": "x", "guidance_scale": Infinity}', "Infinity is not a JSON number"),
    "-Infinity": (b'{"prompt": "x", "guidance_scale": -Infinity}', "-Infinity is not a JSON number"),
    "NaN in a list": (b'{"prompt": "x", "extra": [NaN]}', "NaN is not a JSON number"),
    "a number past float": (
        b'{"prompt": "x", "guidance_scale": 1e400}',
        "guidance_scale: must be a finite number",
    ),
    "5000 digits": (b'{"prompt": "x", "seed": ' + b"9" * 5000 + b"}", "a number has more than 4300 digits"),
    "10**30": (b'{"prompt": "x", "seed": 1' + b"0" * 30 + b"}", "seed: must be between 0 and 4294967295"),
    "negative steps": (
        b'{"prompt": "x", "num_inference_steps": -1}',
        "num_inference_steps: must be between 1",
    ),
    "negative zero size": (b'{"prompt": "x", "width": -0}', "width: must be between 64 and 2048"),
    "huge float count": (
        b'{"prompt": "x", "num_images_per_prompt": 1e308}',
        "num_images_per_prompt: must be between",
    ),
    "fractional seed": (b'{"prompt": "x", "seed": 1.5}', "seed: must be an integer, got 1.5"),
    "count as a string": (b'{"prompt": "x", "num_images_per_prompt": "2"}', "must be an integer, got '2'"),
    "count as a list": (b'{"prompt": "x", "num_images_per_prompt": [2]}', "must be an integer, got [2]"),
    "true as a count": (b'{"prompt": "x", "num_inference_steps": true}', "must be an integer, got True"),
    "size not a multiple of 8": (b'{"prompt": "x", "height": 100}', "height: must be a multiple of 8"),
    "deep nesting": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    "deep nesting in a field": (
        b'{"prompt": "x", "seed": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        "nested too deeply",
    ),
    "top-level null": (b"null", "must be a JSON object, not null"),
    "top-level string": (b'"a cat"', "must be a JSON object, not a string"),
    "top-level number": (b"5", "must be a JSON object, not a number"),
    "empty object": (b"{}", "prompt: is required"),
    "trailing garbage": (b'{"prompt": "x"} {"prompt": "y"}', "Extra data"),
    "single quotes": (b"{'prompt': 'x'}", "not valid JSON"),
    "comments": (b'{"prompt": "x" /* hi */}', "not valid JSON"),
    "whitespace only": (b" \n\t ", "the request body is empty"),
}


@pytest.mark.parametrize("name", REFUSED_JSON)
async def test_bad_json_is_400(t2i: TestClient, name: str) -> None:
    data, fragment = REFUSED_JSON[name]
    response = await t2i.post("/v1/text2image", data=data, headers={"Content-Type": "application/json"})
    await assert_error(response, 400, fragment)


async def test_an_unknown_field_flood_gives_a_short_answer(t2i: TestClient) -> None:
    request = {"prompt": "x", **{f"field{i}" + "x" * 300: i for i in range(2_000)}}
    body = await assert_error(await t2i.post("/v1/text2image", json=request), 400, "and 1995 more")
    assert len(body["detail"]) < 1000


async def test_integral_floats_and_duplicate_keys_are_taken_as_json_says(t2i: TestClient) -> None:
    data = b'{"prompt": "first", "prompt": "last", "num_inference_steps": 2.0, "seed": 7e0}'
    response = await t2i.post("/v1/text2image", data=data, headers={"Content-Type": "application/json"})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert (body["num_inference_steps"], body["seed"]) == (2, 7)


# --- content types ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content_type", "status", "fragment"),
    [
        (None, 415, "not no Content-Type"),
        ("multipart/form-data; boundary=x", 415, "not multipart/form-data"),
        ("application/xml", 415, "not application/xml"),
        ("text/json", 415, "not text/json"),
        ("application/octet-stream", 415, "not application/octet-stream"),
        ("application/json; charset=utf-8", 200, ""),
        ("Application/JSON", 200, ""),
        ("application/vnd.opea+json", 200, ""),
    ],
)
async def test_content_types(t2i: TestClient, content_type: str | None, status: int, fragment: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    data = json.dumps({"prompt": "x", **FAST}).encode()
    # skip_auto_headers: aiohttp would otherwise add application/octet-stream itself.
    response = await t2i.post(
        "/v1/text2image", data=data, headers=headers, skip_auto_headers=["Content-Type"]
    )
    if status == 200:
        assert response.status == 200, await response.text()
    else:
        await assert_error(response, status, fragment)


# --- bodies over the cap ------------------------------------------------------------------------------


async def _chunks(total: int, size: int = 64 * 1024) -> AsyncIterator[bytes]:
    yield b'{"prompt": "'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size


async def test_a_chunked_body_over_the_cap_is_413(t2i: TestClient) -> None:
    # No Content-Length: the cap must hold while the body streams in.
    response = await t2i.post(
        "/v1/text2image", data=_chunks(3 * MIB), headers={"Content-Type": "application/json"}
    )
    assert response.request_info.headers.get("Transfer-Encoding") == "chunked"
    await assert_error(response, 413, "larger than the 1 MiB limit")
    assert (await t2i.get("/health")).status == 200


async def test_an_announced_length_over_the_cap_is_413_before_the_body(t2i: TestClient) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", t2i.port)
    writer.write(
        b"POST /v1/text2image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 10000000000\r\n\r\n{"
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)  # not waiting for 10 GB
    assert head.startswith(b"HTTP/1.1 413")
    writer.close()


async def test_a_compressed_body_is_capped_after_decompression(t2i: TestClient) -> None:
    bomb = gzip.compress(b'{"prompt": "' + b"x" * (64 * MIB) + b'"}', 9)
    assert len(bomb) < MIB // 4  # a quarter of the cap on the wire, 64 times the cap unpacked
    headers = {"Content-Type": "application/json", "Content-Encoding": "gzip"}
    await assert_error(await t2i.post("/v1/text2image", data=bomb, headers=headers), 413, "1 MiB limit")


# --- slow clients ----------------------------------------------------------------------------------------


async def test_a_slow_body_ends_in_504_at_the_request_timeout(
    server_client: Any, server_tiny_t2i: Any
) -> None:
    client = await server_client(server_tiny_t2i, request_timeout=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
    body = json.dumps({"prompt": "slow", **FAST}).encode()
    writer.write(
        b"POST /v1/text2image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
    )
    started = time.monotonic()
    answer = b""
    for byte in body:  # one byte every 0.1 s: the body would take several seconds
        writer.write(bytes([byte]))
        try:
            await writer.drain()
        except ConnectionError:
            break
        try:
            answer = await asyncio.wait_for(reader.read(4096), 0.1)
        except TimeoutError:
            continue
        break
    answer += await asyncio.wait_for(reader.read(4096), 5) if b"\r\n\r\n" not in answer else b""
    elapsed = time.monotonic() - started
    assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    detail = json.loads(answer.split(b"\r\n\r\n", 1)[1])
    assert detail == {"detail": "the request took longer than the 1 s request timeout", "status_code": 504}
    assert 0.9 < elapsed < 5.0
    writer.close()
    assert (await client.post("/v1/text2image", json={"prompt": "after", **FAST})).status == 200


async def test_a_client_that_never_finishes_its_headers_is_cut_off(
    server_client: Any, server_tiny_t2i: Any
) -> None:
    # `serve` runs with KEEPALIVE_TIMEOUT (75 s); the same mechanism, shortened for the test.
    client = await server_client(server_tiny_t2i, keepalive_timeout=0.5)
    with socket.create_connection(("127.0.0.1", client.port), timeout=10) as sock:
        sock.sendall(b"POST /v1/text2image HTTP/1.1\r\nHost: x\r\nContent-Type: appl")
        started = time.monotonic()
        sock.settimeout(10)
        assert await asyncio.to_thread(sock.recv, 100) == b""  # closed without an answer
        assert time.monotonic() - started < 5
    assert (await client.get("/health")).status == 200


async def test_slow_clients_do_not_hold_up_others(server_client: Any, server_tiny_t2i: Any) -> None:
    client = await server_client(server_tiny_t2i, request_timeout=6.0)
    slow = []
    for _ in range(20):  # twenty connections that sent headers and then stall in their bodies
        reader, writer = await asyncio.open_connection("127.0.0.1", client.port)
        writer.write(
            b"POST /v1/text2image HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"prompt"'
        )
        slow.append((reader, writer))
    started = time.monotonic()
    response = await client.post("/v1/text2image", json={"prompt": "meanwhile", **FAST})
    # Served well before the stalled ones time out: they never held a queue place or the worker.
    assert response.status == 200 and time.monotonic() - started < 5.0
    for reader, writer in slow:
        head = await asyncio.wait_for(reader.read(100), 10)
        assert head.startswith(b"HTTP/1.1 504")
        writer.close()


def test_base64_helpers_roundtrip() -> None:
    """The fixtures above are what they claim to be."""
    assert Image.open(io.BytesIO(zeros_png(64, 32))).size == (64, 32)
    assert Image.open(io.BytesIO(animated_gif())).n_frames == 3  # type: ignore[attr-defined]
    assert Image.open(io.BytesIO(sixteen_bit_png())).mode == "I;16"
    assert base64.b64decode(b64(b"x")) == b"x"
