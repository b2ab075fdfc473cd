"""Resolve a model reference (built-in name, local folder, Hub id) to a folder diffusers can load."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import Task
from ..errors import ModelUnavailable

log = logging.getLogger(__name__)

BUILTIN_MODELS = ("tiny",)
# Full-size random-weight pipelines for benchmarks (presets.py); named here so that resolving any
# other reference does not import them.
PRESET_MODELS: dict[str, Task] = {"random:sd21": "text2image", "random:svd-xt": "image2video"}
PRESET_PREFIX = "random:"

# Pipelines whose call signature the text2image wrapper speaks (prompt, negative_prompt, ...).
TEXT2IMAGE_PIPELINES = frozenset(
    {
        "StableDiffusionPipeline",
        "StableDiffusionXLPipeline",
        "LatentConsistencyModelPipeline",
        "PixArtAlphaPipeline",
    }
)
IMAGE2VIDEO_PIPELINES = frozenset({"StableVideoDiffusionPipeline"})
_HUB_ID = re.compile(r"^[\w.-]+(/[\w.-]+)?$")

WAYS_OUT = (
    "Ways out: connect to huggingface.co and retry (set HF_TOKEN for gated models), "
    "pass a local folder holding the pipeline with --model PATH, "
    "or use --model tiny for an offline smoke run."
)


@dataclass(frozen=True)
class ModelSource:
    ref: str
    kind: Literal["builtin", "local", "hub", "preset"]
    location: str  # a folder for builtin/local, the repo id for hub, the name for preset


def task_of_pipeline(class_name: str) -> Task | None:
    if class_name in TEXT2IMAGE_PIPELINES:
        return "text2image"
    if class_name in IMAGE2VIDEO_PIPELINES:
        return "image2video"
    return None


def resolve(task: Task, ref: str, *, cache_root: Path) -> ModelSource:
    """Find the folder to load; raises ModelUnavailable with a way out when there is none."""
    if ref in BUILTIN_MODELS:
        from .tiny import ensure_tiny

        folder = ensure_tiny(task, cache_root)
        return ModelSource(ref, "builtin", str(folder))
    if ref.startswith(PRESET_PREFIX):
        holds = PRESET_MODELS.get(ref)
        if holds is None:
            raise ModelUnavailable(f"unknown preset {ref!r}; the presets are {', '.join(PRESET_MODELS)}")
        if holds != task:
            raise ModelUnavailable(f"{ref} is a preset for {holds}, not for {task}")
        return ModelSource(ref, "preset", ref)
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "model_index.json").is_file():
            raise ModelUnavailable(f"{ref} is not a diffusers pipeline folder (it has no model_index.json)")
        _check_task(task, ref, path / "model_index.json")
        return ModelSource(ref, "local", str(path))
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):
        raise ModelUnavailable(
            f"model {ref!r} is neither a built-in ({', '.join((*BUILTIN_MODELS, *PRESET_MODELS))}), "
            "an existing folder, nor a Hugging Face Hub id like org/name"
        )
    _check_task(task, ref, _fetch_model_index(ref))
    return ModelSource(ref, "hub", ref)


def _check_task(task: Task, ref: str, model_index: Path) -> None:
    try:
        class_name = json.loads(model_index.read_text())["_class_name"]
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelUnavailable(f"{ref}: model_index.json is unreadable or names no pipeline class") from None
    holds = task_of_pipeline(class_name)
    if holds == task:
        return
    what = f"{_a(holds)} pipeline" if holds else "a pipeline opea-media does not run"
    raise ModelUnavailable(f"{ref} holds {class_name}, {what}, not {_a(task)} pipeline")


def _a(task: str) -> str:
    """The task with its article: "a text2image", "an image2video"."""
    return f"{'an' if task[0] in 'aeiou' else 'a'} {task}"


def _fetch_model_index(repo_id: str) -> Path:
    # Fetch the small index first: it tells the task before gigabytes move, and its errors
    # are the precise ones (gated, missing, offline) that a person can act on.
    from huggingface_hub import constants, hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    try:
        return Path(hf_hub_download(repo_id, "model_index.json"))
    except GatedRepoError:
        raise ModelUnavailable(
            f"{repo_id} is gated: accept its licence at https://huggingface.co/{repo_id} "
            "and set HF_TOKEN to a token of that account"
        ) from None
    except RepositoryNotFoundError:
        raise ModelUnavailable(
            f"{repo_id} was not found on the Hugging Face Hub (a private model needs HF_TOKEN)"
        ) from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub could not be reached"
        raise ModelUnavailable(
            f"{repo_id} is not in the local cache ({constants.HF_HUB_CACHE}) and {why}. {WAYS_OUT}"
        ) from None
    except EntryNotFoundError:
        raise ModelUnavailable(f"{repo_id} has no model_index.json: it is not a diffusers pipeline") from None
    except (HfHubHTTPError, OSError) as exc:
        log.warning("fetching %s/model_index.json failed", repo_id, exc_info=True)
        raise ModelUnavailable(
            f"could not fetch {repo_id} from the Hub ({type(exc).__name__}). {WAYS_OUT}"
        ) from None


def disable_telemetry() -> None:
    """The spec promises nothing leaves the machine except model downloads."""
    for name in ("HF_HUB_DISABLE_TELEMETRY", "DISABLE_TELEMETRY", "DO_NOT_TRACK"):
        os.environ.setdefault(name, "1")
