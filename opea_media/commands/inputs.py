"""Input images of the commands: files or http(s) URLs, read under the services' input limits."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..config import DEFAULT_FETCH_TIMEOUT

if TYPE_CHECKING:
    from PIL import Image


def read_images(sources: list[str]) -> list[Image.Image]:
    """Files or http(s) URLs (or data URIs); the person running the CLI may reach their own network."""
    from ..media.fetch import UrlPolicy
    from ..media.sources import load_images

    policy = UrlPolicy(allow_private=True)
    loading = load_images(
        sources, fields=sources, policy=policy, fetch_timeout=DEFAULT_FETCH_TIMEOUT, files=True
    )
    return asyncio.run(loading)
