"""Input images of the commands: files or http(s) URLs, read under the services' input limits."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..config import DEFAULT_FETCH_TIMEOUT

if TYPE_CHECKING:
    from PIL import Image

    from ..media.fetch import UrlPolicy


def read_images(sources: list[str]) -> list[Image.Image]:
    """Files or http(s) URLs (or data URIs); the person running the CLI may reach their own network."""
    from ..media.sources import load_images

    loading = load_images(
        sources, fields=sources, policy=_policy(), fetch_timeout=DEFAULT_FETCH_TIMEOUT, files=True
    )
    return asyncio.run(loading)


def read_image_bytes(sources: list[str]) -> list[bytes]:
    """What read_images reads, as the bytes themselves (for a service to decode): each is checked
    to decode here first, so a bad input fails as it does in a local run, before any upload."""
    from ..media.images import decode_image
    from ..media.sources import source_bytes

    async def read(source: str) -> bytes:
        data = await source_bytes(
            source, field=source, policy=_policy(), fetch_timeout=DEFAULT_FETCH_TIMEOUT, files=True, pool=None
        )
        decode_image(data, source=source)
        return data

    async def read_all() -> list[bytes]:
        return list(await asyncio.gather(*(read(source) for source in sources)))

    return asyncio.run(read_all())


def _policy() -> UrlPolicy:
    from ..media.fetch import UrlPolicy

    return UrlPolicy(allow_private=True)
