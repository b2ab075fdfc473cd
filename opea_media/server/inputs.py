"""An `image_path` string to a decoded image: an http(s) URL, a data URI or plain base64, never a file."""

from __future__ import annotations

import asyncio
import functools
import re
from concurrent.futures import Executor

from PIL import Image

from ..errors import InvalidInput
from ..media.fetch import UrlPolicy, fetch_url
from ..media.images import (
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


async def load_image(
    source: str,
    *,
    field: str,
    policy: UrlPolicy,
    fetch_timeout: float,
    pool: Executor,
) -> Image.Image:
    """Fetch or decode one image under every input limit; failures are InvalidInput naming `field`."""
    loop = asyncio.get_running_loop()
    if looks_like_url(source):
        # fetch_url refuses other schemes (file://, ftp://) and non-public addresses.
        data = await fetch_url(source, policy, max_bytes=MAX_INPUT_BYTES, timeout=fetch_timeout, field=field)
    else:
        try:
            # Decoding megabytes of base64 takes long enough to stall every other request.
            data = await loop.run_in_executor(
                pool, functools.partial(decode_base64_image, source, field=field)
            )
        except InvalidInput:
            if not is_data_uri(source) and _looks_like_path(source):
                raise InvalidInput(_NOT_A_FILE, field=field) from None
            raise
    try:
        return await loop.run_in_executor(pool, functools.partial(decode_image, data, source=field))
    except InvalidInput:
        # Some paths ("/etc/passwd") are also valid base64; what they decode to is no image. But
        # base64 JPEGs start with "/9j/" too: bytes with an image's magic number are a broken image.
        is_plain = not looks_like_url(source) and not is_data_uri(source)
        if is_plain and _looks_like_path(source) and sniff_format(data) is None:
            raise InvalidInput(_NOT_A_FILE, field=field) from None
        raise


async def load_images(
    sources: list[str], *, policy: UrlPolicy, fetch_timeout: float, pool: Executor
) -> list[Image.Image]:
    """All of a request's images, fetched and decoded concurrently, in order."""
    tasks = [
        asyncio.ensure_future(
            load_image(
                source,
                field=f"images_path[{i}].image_path",
                policy=policy,
                fetch_timeout=fetch_timeout,
                pool=pool,
            )
        )
        for i, source in enumerate(sources)
    ]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        # One bad image settles the request: stop fetching the others.
        for task in tasks:
            task.cancel()
        raise
