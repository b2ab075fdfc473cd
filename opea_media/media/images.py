"""Still images in and out: decode untrusted bytes under limits, encode PNG, fit to a size."""

from __future__ import annotations

import base64
import binascii
import io
import re
import struct
import zlib
from collections.abc import Callable
from typing import NoReturn

from PIL import Image, ImageOps, PngImagePlugin, UnidentifiedImageError

from ..errors import InvalidInput, OpeaMediaError
from .lane import one_at_a_time

MAX_INPUT_PIXELS = 4096 * 4096
MIN_INPUT_SIDE = 8
MAX_INPUT_BYTES = 20 * 1024 * 1024
ALLOWED_INPUT_FORMATS = ("PNG", "JPEG", "WEBP", "GIF", "BMP")

# Pillow's own bomb check runs inside Image.open, before ours. Aligning its limit with ours means
# every image opened in this process (diffusers' loaders too) obeys the same cap, and anything
# Pillow refuses outright (over 2x the cap) surfaces as DecompressionBombError, which we catch.
Image.MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS

# What Pillow raises while parsing or decoding bad bytes; all of them mean "your image is broken".
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, struct.error, zlib.error)

# Magic numbers of formats we refuse, only to name them in the error message: Pillow is never
# asked to parse a format outside the allowlist.
_SIGNATURES: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "PNG"),
    (0, b"\xff\xd8\xff", "JPEG"),
    (0, b"GIF87a", "GIF"),
    (0, b"GIF89a", "GIF"),
    (0, b"BM", "BMP"),
    (0, b"II*\x00", "TIFF"),
    (0, b"MM\x00*", "TIFF"),
    (0, b"\x00\x00\x01\x00", "ICO"),
    (0, b"\x00\x00\x02\x00", "CUR"),
    (0, b"8BPS", "PSD"),
    (0, b"%PDF", "PDF"),
    (0, b"%!PS", "EPS"),
    (0, b"\xc5\xd0\xd3\xc6", "EPS"),
    (0, b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (0, b"\xff\x4f\xff\x51", "JPEG 2000"),
    (0, b"qoif", "QOI"),
    (0, b"DDS ", "DDS"),
    (0, b"icns", "ICNS"),
    (0, b"<svg", "SVG"),
    (0, b"<?xml", "XML/SVG"),
    (4, b"ftypavif", "AVIF"),
    (4, b"ftypheic", "HEIC"),
    (4, b"ftypmif1", "HEIF"),
)

# zlib level for PNGs sent in responses (25 frames of a clip per request): level 1 encodes a
# 1024x576 frame 3-8x faster than Pillow's default 6 and 2-3x faster than 3, for 5-15% more bytes
# (docs/performance.md). Files the CLI writes keep level 6: one image, read many times.
RESPONSE_PNG_COMPRESS_LEVEL = 1
FILE_PNG_COMPRESS_LEVEL = 6

_URL_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_NOT_BASE64 = re.compile(r"[^A-Za-z0-9+/=]")
_WHITESPACE = re.compile(r"\s+")


def sniff_format(data: bytes) -> str | None:
    """The image format named by the first bytes (magic number), or None."""
    if data[8:12] == b"WEBP" and data[:4] == b"RIFF":
        return "WEBP"
    for offset, magic, name in _SIGNATURES:
        if data[offset : offset + len(magic)] == magic:
            return name
    return None


def _unidentified(data: bytes, source: str) -> InvalidInput:
    allowed = ", ".join(ALLOWED_INPUT_FORMATS)
    found = sniff_format(data)
    if found in ALLOWED_INPUT_FORMATS:
        return InvalidInput(f"{source} is not a readable image: its {found} header is corrupt")
    if found:
        return InvalidInput(f"{source} is a {found} image; allowed formats are {allowed}")
    return InvalidInput(f"{source} is not a readable image (allowed formats: {allowed})")


def decode_image(data: bytes, *, source: str = "image") -> Image.Image:
    """Decode untrusted bytes into a loaded RGB image, enforcing format, size and pixel limits."""
    return _decode_checked(data, source, to_rgb)


def decode_mask(data: bytes, *, source: str = "mask", transparent_repaints: bool = False) -> Image.Image:
    """An inpainting mask ("L", white = repaint) from untrusted bytes, under the same limits.

    `transparent_repaints`: OpenAI's convention, where the fully transparent pixels of the mask
    mark what to repaint; a mask without transparency is then read by its brightness, as always.
    """
    image = _decode_checked(data, source, lambda im: im.copy())
    has_alpha = image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if transparent_repaints and has_alpha:
        alpha = image.convert("RGBA").getchannel("A")
        return alpha.point(lambda a: 255 if a == 0 else 0)
    return to_rgb(image).convert("L")


def _decode_checked(data: bytes, source: str, finish: Callable[[Image.Image], Image.Image]) -> Image.Image:
    """finish(the decoded image, EXIF orientation applied), after every limit's check."""
    if not data:
        raise InvalidInput(f"{source} is empty")
    if len(data) > MAX_INPUT_BYTES:
        raise InvalidInput(f"{source} is {len(data)} bytes; the limit is {MAX_INPUT_BYTES} bytes")
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_INPUT_FORMATS)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise InvalidInput(
            f"{source} claims more than {MAX_INPUT_PIXELS} pixels (4096x4096), the limit"
        ) from None
    except UnidentifiedImageError:
        raise _unidentified(data, source) from None
    except _DECODE_ERRORS:
        raise InvalidInput(f"{source} is not a readable image: it is truncated or corrupt") from None
    with image:
        width, height = image.size
        # Checked from the header, before any pixel is decoded: a bomb never gets allocated.
        if width * height > MAX_INPUT_PIXELS:
            raise InvalidInput(
                f"{source} is {width}x{height} pixels; the limit is {MAX_INPUT_PIXELS} pixels (4096x4096)"
            )
        if min(width, height) < MIN_INPUT_SIDE:
            raise InvalidInput(
                f"{source} is {width}x{height} pixels; each side must be at least {MIN_INPUT_SIDE} pixels"
            )
        try:
            image.load()  # animated GIF/WebP: Image.open already sits on the first frame
            _apply_exif_orientation(image)
            return finish(image)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise InvalidInput(f"{source} has a frame larger than the pixel limit") from None
        except _DECODE_ERRORS as err:
            if "truncated" in str(err):
                raise InvalidInput(f"{source} is truncated") from None
            raise InvalidInput(f"{source} is not a readable image: its pixel data is corrupt") from None


def _apply_exif_orientation(image: Image.Image) -> None:
    # Phone photos store "rotate me" in EXIF; apply it so we see what the user sees. A damaged
    # EXIF block is only metadata: the pixels are still good, so it is ignored, not refused.
    try:
        ImageOps.exif_transpose(image, in_place=True)
    except (*_DECODE_ERRORS, KeyError, TypeError):
        pass


def to_rgb(image: Image.Image) -> Image.Image:
    """A new 8-bit RGB copy: transparency composited on white, 16-bit scaled, not clipped."""
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # Pillow's own convert clips these to 0..255, turning any 16-bit photo white.
        image = _scale_to_8bit(image)
        mode = image.mode
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    if has_alpha:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def _scale_to_8bit(image: Image.Image) -> Image.Image:
    import numpy as np  # only 16-bit inputs need it; keeps numpy out of the CLI's start-up

    pixels = np.asarray(image, dtype=np.float64)
    # "I" has no fixed range; in the allowed formats it only comes from 16-bit PNGs.
    scaled = np.clip(pixels / 257.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(scaled)  # 2-D uint8: mode "L"


def looks_like_url(text: str) -> bool:
    """True when text starts with a URL scheme and '//' (http://, file://, ...)."""
    return bool(_URL_SCHEME.match(text.strip()))


def is_data_uri(text: str) -> bool:
    return text.lstrip()[:5].lower() == "data:"


@one_at_a_time
def decode_base64_image(text: str, *, field: str) -> bytes:
    """Bytes from a `data:image/...;base64,` URI or bare base64 (standard or URL-safe).

    Megabytes of it are common, and this runs in the I/O threads beside the event loop: every
    pass over the text is a bytes method (not a regex, 20-50x slower, holding the GIL for a
    second on 25 MB), and the decoding goes in slices between which the GIL is free.
    """
    if not isinstance(text, str):
        raise InvalidInput(f"must be a base64 string, got {type(text).__name__}", field=field)
    payload = text.strip()
    if not payload:
        raise InvalidInput("is empty", field=field)
    if is_data_uri(payload):
        payload = _data_uri_payload(payload, field)
    data = _ascii_without_whitespace(payload, field)  # wrapped base64 (MIME, PEM style) is common
    if not data:
        raise InvalidInput("contains no base64 data", field=field)
    # Refuse before decoding: the decoded size follows from the length.
    limit_chars = (MAX_INPUT_BYTES + 2) // 3 * 4
    if len(data) > limit_chars:
        raise InvalidInput(
            f"decodes to about {len(data) * 3 // 4} bytes; the limit is {MAX_INPUT_BYTES} bytes",
            field=field,
        )
    if b"-" in data or b"_" in data:
        if b"+" in data or b"/" in data:
            raise InvalidInput("mixes the standard and URL-safe base64 alphabets", field=field)
        data = data.translate(_URL_SAFE_TO_STANDARD)
    for at in range(0, len(data), _BASE64_SLICE):
        bad = data[at : at + _BASE64_SLICE].translate(None, _BASE64_CHARACTERS)
        if bad:
            _refuse_character(data, bad, field)
    tail = data[-3:]
    length = len(data) - (len(tail) - len(tail.rstrip(b"=")))  # without the '=' padding
    if data.find(b"=", 0, length) >= 0 or len(data) - length > 2 or length % 4 == 1:
        raise InvalidInput("is not valid base64: its length or '=' padding is wrong", field=field)
    view, padding = memoryview(data)[:length], b"=" * (-length % 4)
    try:
        decoded = b"".join(
            binascii.a2b_base64(
                view[at : at + _BASE64_SLICE] if at + _BASE64_SLICE < length
                else bytes(view[at:]) + padding,
                strict_mode=True,
            )
            for at in range(0, length, _BASE64_SLICE)
        )  # fmt: skip
    except binascii.Error:
        raise InvalidInput("is not valid base64", field=field) from None
    if not decoded:
        raise InvalidInput("decodes to no data", field=field)
    if len(decoded) > MAX_INPUT_BYTES:
        raise InvalidInput(
            f"decodes to {len(decoded)} bytes; the limit is {MAX_INPUT_BYTES} bytes", field=field
        )
    return decoded


# Characters of base64 handled per call (a multiple of 4): about a millisecond each.
_BASE64_SLICE = 1024 * 1024
_BASE64_CHARACTERS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/="
_URL_SAFE_TO_STANDARD = bytes.maketrans(b"-_", b"+/")
_ASCII_WHITESPACE = bytes(c for c in range(128) if chr(c).isspace())  # what \s is among them


def _ascii_without_whitespace(payload: str, field: str) -> bytes:
    try:
        return b"".join(
            payload[at : at + _BASE64_SLICE].encode("ascii").translate(None, _ASCII_WHITESPACE)
            for at in range(0, len(payload), _BASE64_SLICE)
        )
    except UnicodeEncodeError:
        pass
    # Rare, and never valid unless what is not ASCII is whitespace: the slow, exact way.
    payload = _WHITESPACE.sub("", payload)
    if payload.isascii():
        return payload.encode("ascii")
    bad = _NOT_BASE64.search(payload)
    assert bad is not None
    raise InvalidInput(
        f"is not valid base64: {bad.group()!r} at position {bad.start()} is not a base64 character",
        field=field,
    )


def _refuse_character(data: bytes, bad: bytes, field: str) -> NoReturn:
    position = min(data.find(bytes([c])) for c in set(bad))
    raise InvalidInput(
        f"is not valid base64: {chr(data[position])!r} at position {position} is not a base64 character",
        field=field,
    )


def _data_uri_payload(text: str, field: str) -> str:
    # partition, not a regex: the text after the comma is megabytes long.
    header, comma, payload = text[len("data:") :].partition(",")
    if not comma:
        raise InvalidInput("is a data URI without a ',' before the data", field=field)
    params = [p.strip().lower() for p in header.split(";")]
    media_type = params[0] or "text/plain"  # RFC 2397's default
    if not media_type.startswith("image/"):
        raise InvalidInput(f"is a data URI of type {media_type!r}; expected image/*", field=field)
    if "base64" not in params[1:]:
        raise InvalidInput("is a data URI that is not base64-encoded (needs ';base64,')", field=field)
    return payload


def encode_png(
    image: Image.Image,
    *,
    metadata: dict[str, str] | None = None,
    compress_level: int = FILE_PNG_COMPRESS_LEVEL,
) -> bytes:
    """PNG bytes; metadata goes into tEXt chunks, or iTXt (UTF-8) for non-latin-1 text."""
    info = PngImagePlugin.PngInfo()
    for key, value in (metadata or {}).items():
        if not 1 <= len(key) <= 79 or not key.isprintable() or not key.isascii():
            raise OpeaMediaError(f"PNG metadata key {key!r} must be 1-79 printable ASCII characters")
        # Chunks are NUL-separated, and lone surrogates (legal in JSON) cannot be encoded.
        clean = value.replace("\x00", "").encode("utf-8", "replace").decode("utf-8")
        info.add_text(key, clean)  # falls back to iTXt when latin-1 cannot hold the text
    buffer = io.BytesIO()
    try:
        image.save(buffer, format="PNG", pnginfo=info, compress_level=compress_level)
    except (OSError, ValueError) as err:
        raise OpeaMediaError(f"could not encode a {image.mode} image as PNG") from err
    return buffer.getvalue()


def png_base64(image: Image.Image, metadata: dict[str, str] | None = None) -> str:
    """A PNG for an HTTP response, as base64, at the responses' compression level."""
    png = encode_png(image, metadata=metadata, compress_level=RESPONSE_PNG_COMPRESS_LEVEL)
    return base64.b64encode(png).decode("ascii")


# What the OpenAI Images API calls output_format, as Pillow names the format.
OUTPUT_FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def encode_image(
    image: Image.Image, output_format: str, *, quality: int = 100, metadata: dict[str, str] | None = None
) -> bytes:
    """PNG (with its text chunks, at the responses' level), JPEG or WebP at `quality` (0-100)."""
    if output_format == "png":
        return encode_png(image, metadata=metadata, compress_level=RESPONSE_PNG_COMPRESS_LEVEL)
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format=OUTPUT_FORMATS[output_format], quality=quality)
    return buffer.getvalue()


def fit_image(image: Image.Image, width: int, height: int) -> Image.Image:
    """Fit an input image to exactly width x height, the way inputs are fitted to the video size.

    The image is scaled (LANCZOS) until it covers the target on both sides, keeping its aspect
    ratio, and the overflow is cropped equally from both edges (a centre crop). Nothing is
    stretched and no borders are added; a differently shaped input loses its edges. An image that
    already has that size is returned as it is: fitting twice costs nothing and changes nothing.
    """
    if width < 1 or height < 1:
        raise InvalidInput(f"cannot fit an image to {width}x{height} pixels")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), method=Image.Resampling.LANCZOS)
