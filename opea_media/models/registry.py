"""The lazy model registry: one handle per (task, reference); a model loads on first use, once.

Building a registry or a handle imports nothing heavy: torch and diffusers are imported by the
first load, so the service opens its port first and the CLI checks its inputs first.
"""

from __future__ import annotations

import functools
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, cast

from ..config import DEFAULT_MODELS, DEVICES, DTYPES, Task, cache_root
from ..errors import InvalidInput, ModelUnavailable
from .handle import ModelHandle, gist
from .tuning import AppliedTuning, Tuning, auto_dtype

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    from .device import Placement
    from .image2video import Image2VideoModel
    from .text2image import Text2ImageModel

    LoadedModel = Text2ImageModel | Image2VideoModel


class ModelRegistry:
    """Hands out one ModelHandle per (task, reference); nothing loads until asked.

    `dtype="auto"` is chosen per task (tuning.auto_dtype); `tuning=None` means every lever on auto.
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        tuning: Tuning | None = None,
        allow_pickle: bool = False,
    ) -> None:
        if device not in DEVICES:
            raise InvalidInput(
                f"unknown device {device!r}; choose one of {', '.join(DEVICES)}", field="device"
            )
        if dtype not in DTYPES:
            raise InvalidInput(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}", field="dtype")
        self._device = device
        self._dtype = dtype
        self.tuning = tuning or Tuning()
        self._allow_pickle = allow_pickle  # weights in .bin files are pickles: loading one runs code
        self._cache_dir = cache_dir or cache_root()
        self._handles: dict[tuple[Task, str], ModelHandle[LoadedModel]] = {}
        self._lock = threading.Lock()

    def handle(self, task: Task, ref: str | None = None) -> ModelHandle[LoadedModel]:
        ref = ref or DEFAULT_MODELS[task]
        with self._lock:
            key = (task, ref)
            if key not in self._handles:
                self._handles[key] = ModelHandle(task, ref, functools.partial(self._load, task, ref))
            return self._handles[key]

    def placement_for(self, task: Task) -> Placement:
        """Where and in which precision `task` runs: an explicit dtype wins over the task's auto."""
        from .device import choose_placement

        device = choose_placement(self._device, "float32").device
        dtype = auto_dtype(task, device) if self._dtype == "auto" else self._dtype
        return choose_placement(device, dtype)

    def tuning_for(self, task: Task) -> AppliedTuning:
        return self.tuning.resolve(task, self.placement_for(task).device)

    def text2image(self, ref: str | None = None) -> Text2ImageModel:
        return cast("Text2ImageModel", self.handle("text2image", ref).load())

    def image2video(self, ref: str | None = None) -> Image2VideoModel:
        return cast("Image2VideoModel", self.handle("image2video", ref).load())

    def _load(self, task: Task, ref: str) -> LoadedModel:
        from . import sources

        # First where the model is (huggingface_hub only): a model that cannot be had is said in
        # a second, before torch and diffusers take theirs to import.
        source = sources.resolve(task, ref, cache_root=self._cache_dir)
        tame_libraries()
        from diffusers import DiffusionPipeline

        from .image2video import Image2VideoModel
        from .pipeline_tuning import apply_tuning
        from .text2image import Text2ImageModel

        placement = self.placement_for(task)
        tuning = self.tuning.resolve(task, placement.device)
        log.info(
            "reading the pipeline",
            extra={
                "model": ref,
                "source": source.location,
                "device": placement.device,
                "dtype": placement.dtype_name,
                "backend": tuning.backend,
            },
        )
        if source.kind == "preset":
            from .presets import build_preset

            # Random weights are made faster than a checkpoint of the same size is read from disk.
            pipe = build_preset(source.location, dtype=placement.dtype, device=placement.device)
        else:
            half = placement.dtype_name in ("float16", "bfloat16")
            weights = sources.choose_weights(source.files, half_precision=half)
            if weights.pickled and not self._allow_pickle:
                raise ModelUnavailable(
                    f"{ref} has the weights of {', '.join(weights.pickled)} only as pickle (.bin) files, "
                    "and loading a pickle runs the code inside it; convert them to safetensors, or, if you "
                    "trust where they came from, allow it with --allow-pickle-weights "
                    "(OPEA_MEDIA_ALLOW_PICKLE_WEIGHTS=1)"
                )
            log.info("choosing the weight files", extra={"variant": weights.variant or "full precision"})
            try:
                pipe = DiffusionPipeline.from_pretrained(
                    source.location,
                    dtype=placement.dtype,
                    local_files_only=source.cached_only,
                    **weights.options(),
                )
            except (OSError, ValueError) as exc:  # a file missing or unreadable: name it
                looked = f" (looked for the {weights.variant} weights first)" if weights.variant else ""
                raise ModelUnavailable(f"could not load {ref}: {gist(exc)}{looked}") from exc
            pipe = pipe.to(placement.device)
        pipe.set_progress_bar_config(disable=True)
        convert_seconds = None
        if tuning.backend == "openvino":
            from . import openvino

            # Converted from the pipeline just loaded (diffusers' own loading path), before the
            # torch levers are set: what is traced is the plain model.
            key = openvino.cache_key(
                ref=ref, location=source.location, kind=source.kind, dtype=placement.dtype_name, task=task
            )
            conversion = openvino.use_openvino(
                pipe, cache_dir=self._cache_dir, key=key, dtype=placement.dtype_name, threads=tuning.threads
            )
            convert_seconds = conversion.seconds
        apply_tuning(pipe, tuning)
        if source.kind != "preset":
            from .mapped import release_weight_pages

            # The file pages of weights that the load or channels_last copied: 1.7 GiB at SD 2.1 fp32.
            release_weight_pages()
        model: LoadedModel
        if task == "text2image":
            model = Text2ImageModel(pipe, ref=ref, images_per_call=tuning.images_per_call)
        else:
            model = Image2VideoModel(pipe, ref=ref, decode_chunk_size=tuning.decode_chunk_size)
        model.backend, model.convert_seconds = tuning.backend, convert_seconds
        return model


# Libraries that attach a plain-text handler of their own to their root logger when imported.
LIBRARY_LOGGERS = ("diffusers", "transformers", "huggingface_hub")


@functools.cache
def tame_libraries() -> None:
    """Before a load: no tqdm bars for reading a pipeline from disk, and the libraries' log records
    through the application's handlers only (JSON in the service, once, at -v's level in the CLI),
    not also through their own plain-text ones.

    transformers' switch also silences huggingface_hub's download bars, which are worth seeing
    on a first multi-GB download, so those are turned back on unless the user turned them off.
    """
    import diffusers.utils.logging
    import huggingface_hub.constants
    import huggingface_hub.utils
    import huggingface_hub.utils.logging
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS:
        huggingface_hub.utils.enable_progress_bars()
    # Each library adds its handler on first use of its own get_logger: use it, then take it off.
    for library_logging in (
        diffusers.utils.logging,
        transformers.utils.logging,
        huggingface_hub.utils.logging,
    ):
        library_logging.get_logger()
    for name in LIBRARY_LOGGERS:
        library = logging.getLogger(name)
        library.handlers.clear()
        library.propagate = True
