"""Shared fixtures: one cache of built-in tiny pipelines per test session, CPU only, offline."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

# Set before anything imports huggingface_hub: tests never reach for the network, and the
# built-in pipelines are built once into a cache that subprocesses share.
_SESSION_CACHE = Path(tempfile.mkdtemp(prefix="opea-media-test-cache-"))
os.environ.setdefault("OPEA_MEDIA_CACHE", str(_SESSION_CACHE))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("HF_HOME", str(_SESSION_CACHE / "hf-home"))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(scope="session")
def cache_dir() -> Path:
    return Path(os.environ["OPEA_MEDIA_CACHE"])


@pytest.fixture(scope="session")
def registry(cache_dir: Path) -> Iterator[object]:
    """One CPU registry for the session: tiny models load once and are reused."""
    from opea_media.models import ModelRegistry

    yield ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir)


@pytest.fixture(scope="session")
def tiny_t2i(registry):  # type: ignore[no-untyped-def]
    return registry.text2image("tiny")


@pytest.fixture(scope="session")
def tiny_i2v(registry):  # type: ignore[no-untyped-def]
    return registry.image2video("tiny")


# --- the HTTP service (tests/test_server_*.py) ------------------------------------------------------


@pytest.fixture
def server_client(aiohttp_client, tmp_path_factory):  # type: ignore[no-untyped-def]
    """Factory: an in-process test client for create_app(ServerConfig(**options), model_handle=handle).

    Waits until /health says the model is ready unless wait_ready=False. The server runs as
    `serve` runs it (server/serving.py): aiohttp's test server would cancel handlers when a client
    disconnects, which production does not, and the service must notice disconnects on its own.
    Only the connection cap is not there (tests/test_server_connections.py serves the real way).
    """
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from opea_media.server.app import create_app
    from opea_media.server.config import ServerConfig
    from opea_media.server.serving import runner_options

    class ProductionTestServer(TestServer):
        async def _make_runner(self, **kwargs):  # type: ignore[no-untyped-def]
            return web.AppRunner(self.app, **{**kwargs, **runner_options(self.app)})

    async def make(handle=None, *, wait_ready: bool = True, **options):  # type: ignore[no-untyped-def]
        # Each app its own data folder: a SQLite jobs store belongs to one service at a time.
        options.setdefault("data_dir", tmp_path_factory.mktemp("data"))
        app = create_app(ServerConfig(**options), model_handle=handle)
        server = ProductionTestServer(app)
        client = await aiohttp_client(server)
        if wait_ready:
            for _ in range(600):
                response = await client.get("/health")
                if response.status == 200:
                    break
                body = await response.json()
                assert body["status"] == "loading", body
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the model did not become ready within 30 s")
        return client

    return make


@pytest.fixture
def server_tiny_t2i(registry, tiny_t2i):  # type: ignore[no-untyped-def]
    """The session's loaded tiny text2image handle, for create_app(model_handle=...)."""
    return registry.handle("text2image", "tiny")


@pytest.fixture
def server_tiny_i2v(registry, tiny_i2v):  # type: ignore[no-untyped-def]
    return registry.handle("image2video", "tiny")
