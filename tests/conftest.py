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
