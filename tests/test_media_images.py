"""opea_media.media.images: decoding untrusted images under limits, base64, PNG, fitting."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from opea_media.errors import InvalidInput, OpeaMediaError
from opea_media.media.images import (
    MAX_INPUT_BYTES,
    MIN_INPUT_SIDE,
    decode_base64_image,
    decode_image,
    encode_png,
    fit_image,
    is_data_uri,
    looks_like_url,
    png_base64,
    to_rgb,
)


def _encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no pixel data: a bomb that costs nothing."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


def _close(actual: object, expected: tuple[int, ...], tolerance: int = 3) -> bool:
    assert isinstance(actual, tuple), actual
    return all(abs(a - e) <= tolerance for a, e in zip(actual, expected, strict=True))


def _noise(width: int = 64, height: int = 64) -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# --- formats and modes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fmt", "options", "tolerance"),
    [
        ("PNG", {}, 0),
        ("JPEG", {"quality": 95}, 6),
        ("WEBP", {"quality": 95}, 6),
        ("BMP", {}, 0),
        ("GIF", {}, 0),
    ],
)
def test_decode_allowed_formats(fmt: str, options: dict[str, object], tolerance: int) -> None:
    source = Image.new("RGB", (24, 16), (200, 40, 90))
    image = decode_image(_encode(source, fmt, **options))
    assert image.mode == "RGB"
    assert image.size == (24, 16)
    assert _close(image.getpixel((12, 8)), (200, 40, 90), tolerance)


def test_rgba_is_composited_on_white() -> None:
    rgba = Image.new("RGBA", (16, 16), (255, 0, 0, 128))
    rgba.putpixel((0, 0), (0, 0, 255, 0))  # fully transparent: white, not blue, not black
    image = decode_image(_encode(rgba, "PNG"))
    assert image.mode == "RGB"
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert _close(image.getpixel((8, 8)), (255, 127, 127), 1)


def test_la_is_composited_on_white() -> None:
    la = Image.new("LA", (16, 16), (0, 0))
    la.putpixel((1, 1), (0, 255))
    image = decode_image(_encode(la, "PNG"))
    assert image.getpixel((0, 0)) == (255, 255, 255)
    assert image.getpixel((1, 1)) == (0, 0, 0)


def test_palette_with_transparency() -> None:
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putpixel((3, 3), 1)
    data = _encode(palette, "PNG", transparency=0)
    image = decode_image(data)
    assert image.getpixel((0, 0)) == (255, 255, 255)  # transparent index: white
    assert image.getpixel((3, 3)) == (0, 0, 255)


def test_palette_without_transparency() -> None:
    palette = Image.new("P", (16, 16), 1)
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert decode_image(_encode(palette, "PNG")).getpixel((5, 5)) == (10, 200, 30)


def test_cmyk_jpeg() -> None:
    cmyk = Image.new("CMYK", (16, 16), (0, 255, 255, 0))  # pure red
    image = decode_image(_encode(cmyk, "JPEG", quality=95))
    assert image.mode == "RGB"
    assert _close(image.getpixel((8, 8)), (255, 0, 0), 6)


@pytest.mark.parametrize(("value16", "value8"), [(0, 0), (32768, 128), (65535, 255), (16448, 64)])
def test_16_bit_grey_is_scaled_not_clipped(value16: int, value8: int) -> None:
    grey16 = Image.fromarray(np.full((16, 16), value16, dtype=np.uint16))
    assert grey16.mode == "I;16"
    image = decode_image(_encode(grey16, "PNG"))
    assert image.getpixel((4, 4)) == (value8, value8, value8)


def test_32_bit_int_mode_is_scaled_like_16_bit() -> None:
    # Older Pillows open 16-bit PNGs as mode "I"; Pillow 13 cannot write one, so convert directly.
    grey32 = Image.fromarray(np.full((16, 16), 32768, dtype=np.int32), mode="I")
    assert to_rgb(grey32).getpixel((0, 0)) == (128, 128, 128)


def test_grey_and_bilevel() -> None:
    assert decode_image(_encode(Image.new("L", (16, 16), 77), "PNG")).getpixel((1, 1)) == (77, 77, 77)
    bilevel = decode_image(_encode(Image.new("1", (16, 16), 1), "PNG"))
    assert bilevel.getpixel((1, 1)) == (255, 255, 255)


def test_animated_gif_and_webp_give_the_first_frame() -> None:
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    frames = [Image.new("RGB", (16, 16), colour) for colour in colours]
    for fmt in ("GIF", "WEBP"):
        data = _encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=100, loop=0)
        image = decode_image(data)
        assert _close(image.getpixel((8, 8)), (255, 0, 0), 8), fmt


def test_exif_orientation_is_applied() -> None:
    wide = Image.new("RGB", (32, 16), (0, 128, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    image = decode_image(_encode(wide, "JPEG", exif=exif.tobytes()))
    assert image.size == (16, 32)


def test_result_is_independent_of_the_input_bytes() -> None:
    image = decode_image(_encode(Image.new("RGB", (16, 16), (1, 2, 3)), "PNG"))
    image.putpixel((0, 0), (9, 9, 9))  # a loaded, writable, ordinary image
    assert image.getpixel((0, 0)) == (9, 9, 9)


# --- refusals ----------------------------------------------------------------------------------


def test_truncated_png() -> None:
    data = _encode(_noise(), "PNG")
    with pytest.raises(InvalidInput, match=r"upload\.png is truncated"):
        decode_image(data[: len(data) // 2], source="upload.png")


def test_truncated_jpeg() -> None:
    data = _encode(_noise(), "JPEG")
    with pytest.raises(InvalidInput, match="truncated"):
        decode_image(data[: len(data) // 2])


@pytest.mark.parametrize(
    "data",
    [b"this is not an image at all", b"\x00" * 64, b"\x89PNG\r\n\x1a\n" + b"garbage" * 10],
)
def test_corrupt_bytes(data: bytes) -> None:
    with pytest.raises(InvalidInput, match=r"^images_path\[0\] is not a readable image"):
        decode_image(data, source="images_path[0]")


def test_empty_bytes() -> None:
    with pytest.raises(InvalidInput, match="is empty"):
        decode_image(b"")


def test_too_many_bytes_refused_before_parsing() -> None:
    with pytest.raises(InvalidInput, match=f"the limit is {MAX_INPUT_BYTES} bytes"):
        decode_image(b"\x89PNG" + b"\x00" * MAX_INPUT_BYTES)


def test_decompression_bomb_far_over_the_limit() -> None:
    with pytest.raises(InvalidInput, match="pixels") as caught:
        decode_image(_png_header_only(30000, 30000), source="bomb.png")
    assert "bomb.png" in str(caught.value)
    assert "DecompressionBomb" not in str(caught.value)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_just_over_the_limit() -> None:
    with pytest.raises(InvalidInput, match="5000x5000 pixels; the limit is"):
        decode_image(_png_header_only(5000, 5000))


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_warning_raised_as_error_is_still_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="pixels"):
        decode_image(_png_header_only(5000, 5000))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_pixel_limit_is_checked_from_the_header() -> None:
    # 4097 x 4096 has no pixel data at all: the refusal must come before decoding.
    with pytest.raises(InvalidInput, match="4097x4096 pixels"):
        decode_image(_png_header_only(4097, 4096))


@pytest.mark.parametrize("size", [(1, 1), (7, 100), (100, MIN_INPUT_SIDE - 1)])
def test_too_small(size: tuple[int, int]) -> None:
    data = _encode(Image.new("RGB", size), "PNG")
    with pytest.raises(InvalidInput, match=f"at least {MIN_INPUT_SIDE} pixels"):
        decode_image(data)


def test_smallest_allowed_size() -> None:
    data = _encode(Image.new("RGB", (MIN_INPUT_SIDE, MIN_INPUT_SIDE)), "PNG")
    assert decode_image(data).size == (MIN_INPUT_SIDE, MIN_INPUT_SIDE)


@pytest.mark.parametrize("fmt", ["TIFF", "ICO"])
def test_format_not_allowed_is_named(fmt: str) -> None:
    data = _encode(Image.new("RGB", (32, 32), (5, 6, 7)), fmt)
    with pytest.raises(InvalidInput, match=f"is a {fmt} image; allowed formats are PNG, JPEG"):
        decode_image(data)


# --- base64 ------------------------------------------------------------------------------------

PAYLOAD = bytes(range(256)) * 3  # contains bytes that encode to '+', '/', '-' and '_'


def test_plain_base64() -> None:
    assert decode_base64_image(base64.b64encode(PAYLOAD).decode(), field="image") == PAYLOAD


def test_data_uri() -> None:
    text = "data:image/png;base64," + base64.b64encode(PAYLOAD).decode()
    assert decode_base64_image(text, field="image") == PAYLOAD
    upper = "DATA:Image/PNG;BASE64," + base64.b64encode(PAYLOAD).decode()
    assert decode_base64_image(upper, field="image") == PAYLOAD


def test_urlsafe_without_padding_and_with_line_breaks() -> None:
    text = base64.urlsafe_b64encode(PAYLOAD[:-1]).decode().rstrip("=")
    wrapped = "\n".join(text[i : i + 76] for i in range(0, len(text), 76))
    assert decode_base64_image(f"  {wrapped}\r\n", field="image") == PAYLOAD[:-1]


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5])
def test_missing_padding(length: int) -> None:
    text = base64.b64encode(PAYLOAD[:length]).decode().rstrip("=")
    assert decode_base64_image(text, field="image") == PAYLOAD[:length]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "image: is empty"),
        ("   \n ", "image: is empty"),
        ("QUJD@EVG", "'@' at position 4 is not a base64 character"),
        ("QUJD REVG!", "'!'"),
        ("QUJDR", "length or '=' padding is wrong"),
        ("QQ===", "length or '=' padding is wrong"),
        ("QQ==QUJD", "length or '=' padding is wrong"),
        ("ab+c-_xy", "mixes the standard and URL-safe"),
        ("data:text/plain;base64,QUJD", "data URI of type 'text/plain'; expected image/*"),
        ("data:,QUJD", "data URI of type 'text/plain'"),
        ("data:image/png,QUJD", "not base64-encoded"),
        ("data:image/png;base64", "without a ','"),
        ("data:image/png;base64,", "contains no base64 data"),
    ],
)
def test_base64_refusals(text: str, message: str) -> None:
    with pytest.raises(InvalidInput, match=message.replace("(", r"\(").replace("*", r"\*")) as caught:
        decode_base64_image(text, field="image")
    assert str(caught.value).startswith("image: ")


def test_base64_size_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args: object, **kwargs: object) -> bytes:
        raise AssertionError("decoded an oversized payload")

    monkeypatch.setattr(base64, "b64decode", no_decoding)
    oversized = "A" * ((MAX_INPUT_BYTES + 2) // 3 * 4 + 4)
    with pytest.raises(InvalidInput, match=f"the limit is {MAX_INPUT_BYTES} bytes"):
        decode_base64_image(oversized, field="image")


def test_base64_refuses_non_strings() -> None:
    with pytest.raises(InvalidInput, match="must be a base64 string, got int"):
        decode_base64_image(42, field="image")  # type: ignore[arg-type]


def test_url_and_data_uri_detection() -> None:
    assert looks_like_url("http://example.com/a.png")
    assert looks_like_url("  HTTPS://example.com/a.png")
    assert looks_like_url("file:///etc/passwd")
    assert not looks_like_url("images/cat.png")
    assert not looks_like_url("C:\\images\\cat.png")
    assert not looks_like_url("data:image/png;base64,AAAA")
    assert not looks_like_url(base64.b64encode(PAYLOAD).decode())
    assert is_data_uri(" data:image/png;base64,AAAA")
    assert is_data_uri("DATA:image/png;base64,AAAA")
    assert not is_data_uri("http://example.com/data:x")


# --- PNG out and fitting -----------------------------------------------------------------------


def test_png_metadata_round_trip_with_emoji() -> None:
    metadata = {"prompt": "a cat in a hat 🐱🎩, 猫", "negative_prompt": "café, blurry", "seed": "42"}
    data = encode_png(Image.new("RGB", (8, 8), (1, 2, 3)), metadata=metadata)
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        assert image.text == metadata  # type: ignore[attr-defined]
        assert image.getpixel((0, 0)) == (1, 2, 3)


def test_png_metadata_survives_nul_and_lone_surrogates() -> None:
    data = encode_png(Image.new("RGB", (8, 8)), metadata={"prompt": "a\x00b \ud800 c"})
    with Image.open(io.BytesIO(data)) as image:
        assert image.text["prompt"] == "ab ? c"  # type: ignore[attr-defined]


def test_png_metadata_key_must_be_a_png_keyword() -> None:
    with pytest.raises(OpeaMediaError, match="PNG metadata key"):
        encode_png(Image.new("RGB", (8, 8)), metadata={"": "x"})


def test_png_compress_level_and_base64() -> None:
    ramp = np.tile(np.arange(64, dtype=np.uint8), (64, 1))
    image = Image.fromarray(np.stack([ramp, ramp.T, ramp // 2], axis=-1))
    fast, small = encode_png(image, compress_level=0), encode_png(image, compress_level=9)
    assert len(fast) > len(small)
    decoded = base64.b64decode(png_base64(image))
    assert decoded.startswith(b"\x89PNG\r\n\x1a\n")
    assert decode_image(decoded).tobytes() == image.tobytes()


def test_fit_image_covers_then_crops_the_centre() -> None:
    wide = Image.new("RGB", (300, 100), (0, 0, 255))
    wide.paste((255, 0, 0), (100, 0, 200, 100))  # the red middle third is the part kept
    fitted = fit_image(wide, 50, 50)
    assert fitted.size == (50, 50)
    for x in (10, 25, 40):
        assert _close(fitted.getpixel((x, 25)), (255, 0, 0), 10)


def test_fit_image_portrait_into_landscape() -> None:
    tall = Image.new("RGB", (60, 200), (0, 255, 0))
    tall.paste((255, 255, 255), (0, 0, 60, 60))  # the top is cropped away
    fitted = fit_image(tall, 64, 32)
    assert fitted.size == (64, 32)
    assert _close(fitted.getpixel((32, 0)), (0, 255, 0), 10)


def test_fit_image_same_size_and_upscale() -> None:
    image = _noise(40, 30)
    assert fit_image(image, 40, 30).tobytes() == image.tobytes()
    assert fit_image(image, 400, 300).size == (400, 300)


def test_fitting_an_image_that_already_fits_changes_nothing() -> None:
    image = Image.new("RGB", (96, 64), (10, 20, 30))
    fitted = fit_image(image, 64, 64)
    assert fitted.size == (64, 64)
    assert fit_image(fitted, 64, 64) is fitted  # the service fits once; the model's fit is then a no-op
