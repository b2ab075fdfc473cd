"""The service's one model: loaded on the worker thread, its state read by health checks at any time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..config import Task
from ..errors import ModelUnavailable, OpeaMediaError
from .jobs import ModelHandleLike
from .metrics import Metrics

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelStatus:
    state: str  # "loading" | "ready" | "failed"
    detail: str


class ModelSlot:
    """Loads the model once and says how that went: loading, ready, or failed with a reason."""

    def __init__(
        self, *, task: Task, model_ref: str, open_model: Callable[[], ModelHandleLike], metrics: Metrics
    ) -> None:
        self.task = task
        self.model_ref = model_ref
        self._open_model = open_model
        self._metrics = metrics
        # Written once by the worker thread, read by the event loop: single attribute stores.
        self._model: Any = None
        self._failure: str | None = None

    @property
    def status(self) -> ModelStatus:
        if self._model is not None:
            return ModelStatus("ready", f"the {self.task} model {self.model_ref} is ready")
        if self._failure is not None:
            return ModelStatus("failed", self._failure)
        return ModelStatus("loading", f"the {self.task} model {self.model_ref} is loading")

    @property
    def ready(self) -> bool:
        return self._model is not None

    @property
    def model(self) -> Any:
        """The loaded model; ModelUnavailable before that."""
        if self._model is None:
            raise ModelUnavailable(self.status.detail)
        return self._model

    def load(self) -> Any | None:
        """Open and load the model (slow: imports, downloads, weights); None if that failed."""
        extra = {"task": self.task, "model": self.model_ref}
        log.info("loading model", extra=extra)
        started = time.perf_counter()
        try:
            handle = self._open_model()
            model = handle.load()
        except OpeaMediaError as exc:
            self._failure = exc.detail
        except Exception as exc:  # a library surprise: the log gets the traceback, health the gist
            log.exception("model load failed", extra=extra)
            self._failure = f"could not load {self.model_ref} ({type(exc).__name__}); see the service log"
        else:
            seconds = time.perf_counter() - started
            self._metrics.model_load_seconds.set(handle.load_seconds or seconds)
            self._metrics.model_ready.set(1)
            self._model = model
            log.info("model ready", extra={**extra, "seconds": round(seconds, 3)})
            return model
        log.error("model failed to load: %s", self._failure, extra=extra)
        return None
