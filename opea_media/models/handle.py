"""A model that may not be loaded yet, and the one record of its state. Imports nothing heavy."""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from ..config import Task
from ..errors import ModelUnavailable, OpeaMediaError

log = logging.getLogger(__name__)

M = TypeVar("M")


class ModelState(enum.StrEnum):
    NOT_LOADED = "not_loaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class ModelHandle(Generic[M]):
    """`load()` runs the loader exactly once (other threads wait and get the same model).

    The state (not loaded, loading, ready, failed with a reason a person can act on) and the load
    time live here and nowhere else: the CLI, the service's worker, its health checks and its
    metrics all read them from this object. A failed load stays failed; nothing retries it.
    """

    def __init__(self, task: Task, ref: str, loader: Callable[[], M]) -> None:
        self.task = task
        self.ref = ref
        self._loader = loader
        self._lock = threading.Lock()
        # Written under the lock by the loading thread; read from any thread (single stores).
        self.state = ModelState.NOT_LOADED
        self.error: str | None = None
        self.load_seconds: float | None = None
        # Of load_seconds, what the backend spent making its own form of the model (OpenVINO:
        # converting, or reading its cached conversion, and compiling); None for torch.
        self.convert_seconds: float | None = None
        self._model: M | None = None

    @property
    def detail(self) -> str:
        """The state as a sentence, for health checks and 503s."""
        if self.state is ModelState.FAILED:
            return self.error or "the model failed to load"
        return f"the {self.task} model {self.ref} is {self.state.value.replace('_', ' ')}"

    def load(self) -> M:
        """Load on first call; later calls return the same model, or raise the same failure."""
        if self._model is not None:
            return self._model
        with self._lock:
            if self._model is not None:
                return self._model
            if self.state is ModelState.FAILED:
                raise ModelUnavailable(self.detail)
            self.state = ModelState.LOADING
            extra = {"task": self.task, "model": self.ref}
            log.info("loading the model", extra=extra)
            started = time.perf_counter()
            try:
                model = self._loader()
            except OpeaMediaError as exc:
                cause = exc.__cause__
                self._fail(exc.detail, cause if isinstance(cause, Exception) else None)
                raise  # its own type the first time (a bad --device stays bad input)
            except Exception as exc:  # a library failure: the log gets the traceback, the caller the gist
                self._fail(f"could not load {self.ref}: {gist(exc)}", exc)
            else:
                self.load_seconds = time.perf_counter() - started
                self.convert_seconds = getattr(model, "convert_seconds", None)
                self._model = model
                self.state = ModelState.READY
                ready = {**extra, "seconds": round(self.load_seconds, 3)}
                if self.convert_seconds is not None:
                    ready["convert_seconds"] = round(self.convert_seconds, 3)
                log.info("model ready", extra=ready)
                return model
            raise ModelUnavailable(self.detail)

    def get(self) -> M:
        """The loaded model, without waiting: ModelUnavailable while loading or after a failure."""
        if self._model is None:
            raise ModelUnavailable(self.detail)
        return self._model

    def _fail(self, reason: str, exc: Exception | None = None) -> None:
        self.error = reason
        self.state = ModelState.FAILED
        extra = {"task": self.task, "model": self.ref, "reason": reason}
        log.error("model load failed", exc_info=exc, extra=extra)


def gist(exc: BaseException, limit: int = 300) -> str:
    """A library exception in one line a person can act on (the missing file, the bad shape)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    text = text.removeprefix("Error ").rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."
