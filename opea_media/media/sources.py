"""An image source, as a person or a client names one, to a decoded image under every input limit.

A source is an http(s) URL, a data URI, plain base64 (the services) or a file path (the CLI only:
a service never reads its own files). Failures are InvalidInput naming the field or the source.
"""

from __future__ import annotations

import asyncio
import functools
import re
from concurrent.futures import Executor
from pathlib import Path

from PIL import Image

from ..errors import InvalidInput
from .fetch import UrlPolicy, fetch_url
from .images import (
    MAX_INPUT_BYTES,
    decode_base64_image,
    decode_image,
    is_data_uri,
    looks_like_url,
    sniff_format,
)

_WINDOWS_PATH = re.compile(r"^[A-Za-z]:[\\/]")
_IMAGE_SUFFIX = re.compile(r"\.(png|jpe?g|webp|gif|bmp|tiff?)$", re.IGNORECASE)
_NOT_A_FILE = (
    "looks like a file path; this service never reads its own files: "
    "send an http(s) URL, a data URI (data:image/png;base64,...) or the image as base64"
)


def _looks_like_path(text: str) -> bool:
    text = text.strip()
    if len(text) > 4096:  # base64 images are long; paths are short
        return False
    return (
        text.startswith(("/", "~", "./", "../", "\\"))
        or bool(_WINDOWS_PATH.match(text))
        or bool(_IMAGE_SUFFIX.search(text))
    )


def read_file(source: str) -> bytes:
    path = Path(source).expanduser()
    try:
        if path.stat().st_size > MAX_INPUT_BYTES:
            raise InvalidInput(f"larger than the {MAX_INPUT_BYTES // 2**20} MiB input limit", field=source)
        return path.read_bytes()
    except FileNotFoundError:
        raise InvalidInput("no such file", field=source) from None
    except IsADirectoryError:
        raise InvalidInput("is a folder, not an image", field=source) from None
    except OSError as exc:
        raise InvalidInput(f"cannot read it ({exc.strerror or type(exc).__name__})", field=source) from None


async def source_bytes(
    source: str, *, field: str, policy: UrlPolicy, fetch_timeout: float, files: bool, pool: Executor | None
) -> bytes:
    """The bytes a source names; `files`: a source that is no URL or data URI is a file path."""
    loop = asyncio.get_running_loop()
    if looks_like_url(source):
        # fetch_url refuses other schemes (file://, ftp://) and addresses the policy forbids. Its
        # messages name the URL: a field that is the URL itself would name it twice.
        named = None if field == source else field
        return await fetch_url(source, policy, max_bytes=MAX_INPUT_BYTES, timeout=fetch_timeout, field=named)
    if files and not is_data_uri(source):
        return await loop.run_in_executor(pool, read_file, source)
    try:
        # Decoding megabytes of base64 takes long enough to stall every other request.
        return await loop.run_in_executor(pool, functools.partial(decode_base64_image, source, field=field))
    except InvalidInput:
        if not is_data_uri(source) and _looks_like_path(source):
            raise InvalidInput(_NOT_A_FILE, field=field) from None
        raise


async def load_image(
    source: str,
    *,
    field: str,
    policy: UrlPolicy,
    fetch_timeout: float,
    files: bool = False,
    pool: Executor | None = None,
) -> Image.Image:
    """Fetch, read or decode one image under every input limit, off the event loop."""
    data = await source_bytes(
        source, field=field, policy=policy, fetch_timeout=fetch_timeout, files=files, pool=pool
    )
    try:
        return await asyncio.get_running_loop().run_in_executor(
            pool, functools.partial(decode_image, data, source=field)
        )
    except InvalidInput:
        # Some paths ("/etc/passwd") are also valid base64; what they decode to is no image. But
        # base64 JPEGs start with "/9j/" too: bytes with an image's magic number are a broken image.
        plain = not files and not looks_like_url(source) and not is_data_uri(source)
        if plain and _looks_like_path(source) and sniff_format(data) is None:
            raise InvalidInput(_NOT_A_FILE, field=field) from None
        raise


async def load_images(
    sources: list[str],
    *,
    fields: list[str],
    policy: UrlPolicy,
    fetch_timeout: float,
    files: bool = False,
    pool: Executor | None = None,
) -> list[Image.Image]:
    """All of a request's images, fetched and decoded concurrently, in order; the first failure wins."""
    tasks = [
        asyncio.ensure_future(
            load_image(
                source, field=field, policy=policy, fetch_timeout=fetch_timeout, files=files, pool=pool
            )
        )
        for source, field in zip(sources, fields, strict=True)
    ]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:  # one bad image settles the request: stop fetching the others
            task.cancel()
        raise
