"""The lazy model registry: one loaded pipeline per (task, reference), loaded once, thread-safe."""

from __future__ import annotations

import enum
import logging
import threading
import time
from pathlib import Path

from ..config import DEFAULT_MODELS, Task, cache_root
from ..errors import ModelUnavailable, OpeaMediaError
from . import sources
from .device import Placement, choose_placement
from .image2video import Image2VideoModel
from .pipeline_tuning import apply_tuning
from .text2image import Text2ImageModel
from .tuning import AppliedTuning, Tuning, auto_dtype

log = logging.getLogger(__name__)

LoadedModel = Text2ImageModel | Image2VideoModel


class ModelState(enum.StrEnum):
    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelHandle:
    """A model that may not be loaded yet; `load()` loads it exactly once."""

    def __init__(
        self, task: Task, ref: str, placement: Placement, cache_dir: Path, tuning: AppliedTuning | None = None
    ) -> None:
        self.task = task
        self.ref = ref
        self.placement = placement
        self.tuning = tuning or Tuning().resolve(task, placement.device)
        self._cache_dir = cache_dir
        self._lock = threading.Lock()
        self.state = ModelState.NOT_LOADED
        self.error: str | None = None
        self.load_seconds: float | None = None
        self._model: LoadedModel | None = None

    def load(self) -> LoadedModel:
        """Load on first call (others wait for it); later calls return the same model."""
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is not None:
                return self._model
            if self.state is ModelState.FAILED:
                raise ModelUnavailable(self.error or "the model failed to load")
            self.state = ModelState.LOADING
            log.info("model load start", extra={"task": self.task, "model": self.ref})
            started = time.perf_counter()
            try:
                model = self._load()
            except OpeaMediaError as exc:
                self._fail(exc.detail)
                raise ModelUnavailable(exc.detail) from None
            except Exception as exc:  # a library failure: keep the story in the log, not the message
                log.exception("model load failed", extra={"task": self.task, "model": self.ref})
                self._fail(f"could not load {self.ref} ({type(exc).__name__}); see the service log")
                raise ModelUnavailable(self.error or "") from None
            self.load_seconds = time.perf_counter() - started
            self._model = model
            self.state = ModelState.READY
            log.info(
                "model load end",
                extra={"task": self.task, "model": self.ref, "seconds": round(self.load_seconds, 3)},
            )
            return model

    def get(self) -> LoadedModel:
        """The loaded model, without waiting: ModelUnavailable while loading or after a failure."""
        if self._model is not None:
            return self._model
        if self.state is ModelState.FAILED:
            raise ModelUnavailable(self.error or "the model failed to load")
        raise ModelUnavailable(f"the {self.task} model is {self.state.value.replace('_', ' ')}")

    def _fail(self, reason: str) -> None:
        self.error = reason
        self.state = ModelState.FAILED
        log.error("model load failed: %s", reason, extra={"task": self.task, "model": self.ref})

    def _load(self) -> LoadedModel:
        from diffusers import DiffusionPipeline

        quiet_library_progress_bars()
        source = sources.resolve(self.task, self.ref, cache_root=self._cache_dir)
        if source.kind == "preset":
            from .presets import build_preset

            # Random weights are made faster than a checkpoint of the same size is read from disk.
            pipe = build_preset(source.location, dtype=self.placement.dtype, device=self.placement.device)
        else:
            pipe = DiffusionPipeline.from_pretrained(source.location, dtype=self.placement.dtype)
            pipe = pipe.to(self.placement.device)
        pipe.set_progress_bar_config(disable=True)
        apply_tuning(pipe, self.tuning)
        if self.task == "text2image":
            return Text2ImageModel(pipe, ref=self.ref, images_per_call=self.tuning.images_per_call)
        return Image2VideoModel(pipe, ref=self.ref, decode_chunk_size=self.tuning.decode_chunk_size)


class ModelRegistry:
    """Hands out one ModelHandle per (task, reference); nothing loads until asked.

    `dtype="auto"` is chosen per task (tuning.auto_dtype); `tuning` holds the levers as the caller
    was given them (the commands read flags and OPEA_MEDIA_* variables), `Tuning()` by default.
    """

    def __init__(
        self,
        *,
        device: str = "auto",
        dtype: str = "auto",
        cache_dir: Path | None = None,
        tuning: Tuning | None = None,
    ) -> None:
        self.placement = choose_placement(device, dtype)
        self._dtype = dtype
        self.tuning = tuning or Tuning()
        self._cache_dir = cache_dir or cache_root()
        self._handles: dict[tuple[Task, str], ModelHandle] = {}
        self._lock = threading.Lock()

    def handle(self, task: Task, ref: str | None = None) -> ModelHandle:
        ref = ref or DEFAULT_MODELS[task]
        with self._lock:
            key = (task, ref)
            if key not in self._handles:
                self._handles[key] = ModelHandle(
                    task,
                    ref,
                    self.placement_for(task),
                    self._cache_dir,
                    self.tuning.resolve(task, self.placement.device),
                )
            return self._handles[key]

    def placement_for(self, task: Task) -> Placement:
        """Where and in which precision `task` runs: an explicit dtype wins over the task's auto."""
        if self._dtype != "auto":
            return self.placement
        return choose_placement(self.placement.device, auto_dtype(task, self.placement.device))

    def text2image(self, ref: str | None = None) -> Text2ImageModel:
        model = self.handle("text2image", ref).load()
        assert isinstance(model, Text2ImageModel)
        return model

    def image2video(self, ref: str | None = None) -> Image2VideoModel:
        model = self.handle("image2video", ref).load()
        assert isinstance(model, Image2VideoModel)
        return model


def quiet_library_progress_bars() -> None:
    """Loading a pipeline from disk takes a second; its tqdm bars are noise on our output.

    transformers' switch also silences huggingface_hub's download bars, which are worth seeing
    on a first multi-GB download, so those are turned back on unless the user turned them off.
    """
    import diffusers.utils.logging
    import huggingface_hub.constants
    import huggingface_hub.utils
    import transformers.utils.logging

    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()
    if not huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS:
        huggingface_hub.utils.enable_progress_bars()
