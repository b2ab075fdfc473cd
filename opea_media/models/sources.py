"""Resolve a model reference (built-in name, local folder, Hub id) to a folder diffusers can load."""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ..config import Task
from ..errors import ModelUnavailable

log = logging.getLogger(__name__)

# The trained built-ins (in the package) and the one task each serves; tiny has a random-weight
# pipeline for every task.
TRAINED_BUILTINS: dict[str, Task] = {"shapes": "text2image"}
BUILTIN_MODELS = ("tiny", *TRAINED_BUILTINS)
BUILTIN_HELP = (
    "'shapes' (built in, trained by the project: draws simple prompts such as \"a red circle on a "
    "blue background\", offline; text2image) or 'tiny' (built in, random weights, for smoke runs)"
)
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
    "or use a built-in model: --model shapes (text2image) or --model tiny (random weights)."
)


@dataclass(frozen=True)
class ModelSource:
    ref: str
    kind: Literal["builtin", "local", "hub", "preset"]
    location: str  # a folder for builtin/local, the repo id for hub, the name for preset
    # The weight files (paths relative to the pipeline's root) that a load may choose from: the
    # folder's, or the Hub repo's (the cached snapshot's when the Hub cannot be asked).
    files: tuple[str, ...] = ()
    # A Hub model to load from the local cache only: the Hub is out of reach (or HF_HUB_OFFLINE).
    cached_only: bool = False


# A weight file of a pipeline component, as diffusers and transformers name them.
WEIGHT_FILE = re.compile(r"\.(safetensors|bin)$")
_VARIANT = re.compile(r"\.(?P<variant>[A-Za-z0-9_-]+)\.(safetensors|bin)$")
_SHARD = re.compile(r"-\d{5}-of-\d{5}\.")


def weight_files(folder: Path) -> tuple[str, ...]:
    return tuple(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if WEIGHT_FILE.search(p.name)))


@dataclass(frozen=True)
class WeightChoice:
    """Which of a pipeline's weight files to load: a variant (None: full precision), and the
    components whose chosen weights exist only as pickles (.bin: loading one runs its code)."""

    variant: str | None
    pickled: tuple[str, ...]

    def options(self) -> dict[str, str | bool | None]:
        """diffusers' from_pretrained (and download) options that load, and fetch, only these files."""
        return {"variant": self.variant, "use_safetensors": None if self.pickled else True}


def choose_weights(files: tuple[str, ...], *, half_precision: bool) -> WeightChoice:
    """fp16 files for a 16-bit run when there are any, or when there is nothing else."""

    def variant_of(name: str) -> str | None:
        match = _VARIANT.search(_SHARD.sub(".", name.rsplit("/", 1)[-1]))  # x.fp16-00001-of-00002.safetensors
        return match.group("variant") if match else None

    fp16 = [f for f in files if variant_of(f) == "fp16"]
    full = [f for f in files if variant_of(f) is None]
    variant = "fp16" if fp16 and (half_precision or not full) else None
    by_component: dict[str, set[str]] = {}
    for name in fp16 if variant else full:
        component, _, base = name.rpartition("/")
        by_component.setdefault(component, set()).add(base.rsplit(".", 1)[-1])
    pickled = tuple(sorted(c for c, kinds in by_component.items() if "safetensors" not in kinds))
    return WeightChoice(variant, pickled)


def task_of_pipeline(class_name: str) -> Task | None:
    if class_name in TEXT2IMAGE_PIPELINES:
        return "text2image"
    if class_name in IMAGE2VIDEO_PIPELINES:
        return "image2video"
    return None


def resolve(task: Task, ref: str, *, cache_root: Path) -> ModelSource:
    """Find the folder to load; raises ModelUnavailable with a way out when there is none."""
    if ref in TRAINED_BUILTINS:
        if TRAINED_BUILTINS[ref] != task:
            raise ModelUnavailable(f"{ref} is a built-in {TRAINED_BUILTINS[ref]} model; for {task} use tiny")
        from .shapes import FOLDER

        return ModelSource(ref, "builtin", str(FOLDER), weight_files(FOLDER))
    if ref in BUILTIN_MODELS:
        from .tiny import ensure_tiny

        folder = ensure_tiny(task, cache_root)
        return ModelSource(ref, "builtin", str(folder), weight_files(folder))
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
        return ModelSource(ref, "local", str(path), weight_files(path))
    if ref.startswith((".", "/", "~")) or not _HUB_ID.match(ref):
        raise ModelUnavailable(
            f"model {ref!r} is neither a built-in ({', '.join((*BUILTIN_MODELS, *PRESET_MODELS))}), "
            "an existing folder, nor a Hugging Face Hub id like org/name"
        )
    unreachable = hub_unreachable()
    model_index = _fetch_model_index(ref, unreachable=unreachable)
    _check_task(task, ref, model_index)
    files = weight_files(model_index.parent) if unreachable else _hub_weight_files(ref, model_index.parent)
    return ModelSource(ref, "hub", ref, files, cached_only=unreachable is not None)


HUB_PROBE_SECONDS = 2.0
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_unreachable() -> str | None:
    """Why the Hub cannot be reached, after one quick look; None when it answers (or behind a proxy).

    huggingface_hub retries a failed connection five times over half a minute, printing each try;
    a machine without the network should hear "not in the cache" at once instead.
    """
    from urllib.parse import urlsplit

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set"
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return None  # only the proxy knows; let huggingface_hub ask it
    endpoint = urlsplit(constants.ENDPOINT)
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        socket.create_connection((endpoint.hostname or "", port), timeout=HUB_PROBE_SECONDS).close()
    except OSError as exc:
        return f"the Hub ({endpoint.hostname}) could not be reached: {exc.strerror or type(exc).__name__}"
    return None


def _hub_weight_files(repo_id: str, snapshot: Path) -> tuple[str, ...]:
    """The repo's weight files as the Hub lists them; those of the cached snapshot if it won't say."""
    from huggingface_hub import HfApi

    try:
        return tuple(sorted(f for f in HfApi().list_repo_files(repo_id) if WEIGHT_FILE.search(f)))
    except Exception:  # noqa: BLE001 (any failure here only means: go by what is cached)
        log.debug("listing %s on the Hub failed; using the cached files", repo_id, exc_info=True)
        return weight_files(snapshot)


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


def _fetch_model_index(repo_id: str, *, unreachable: str | None) -> Path:
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
        return Path(hf_hub_download(repo_id, "model_index.json", local_files_only=unreachable is not None))
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
        why = unreachable or "the Hub could not be reached"
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
