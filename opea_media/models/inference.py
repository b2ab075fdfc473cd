"""What both model wrappers share around a pipeline call: progress, interruption, failures."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from ..errors import ModelFailure, OpeaMediaError, OutOfMemory

log = logging.getLogger(__name__)

StepCallback = Callable[[int, int], None]


def step_callback(
    total: int,
    on_step: StepCallback | None,
    *,
    done: int = 0,
    then: Callable[[int, dict[str, Any]], None] | None = None,
) -> Any:
    """A diffusers `callback_on_step_end` that reports (done + step, total) after each step.

    `done`: steps of earlier pipeline calls of the same job. `on_step` may raise Cancelled: the
    pipeline then stops at that step instead of finishing. `then(step, tensors)` runs next, with
    the step of this call (1-based) and the pipeline's callback tensors (previews).
    """

    def callback(pipe: Any, step: int, timestep: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
        if on_step is not None:
            on_step(done + step + 1, total)
        if then is not None:
            then(step + 1, kwargs)
        return kwargs

    return callback


def run_pipeline(pipe: Any, **kwargs: Any) -> Any:
    """Call the pipeline with autograd off; turn library failures into our error types."""
    started = time.perf_counter()
    with library_errors(), torch.inference_mode():
        output = pipe(**kwargs)
    log.debug(
        "pipeline call done",
        extra={
            "pipeline": type(pipe).__name__,
            "steps": kwargs.get("num_inference_steps"),
            "size": f"{kwargs.get('width')}x{kwargs.get('height')}",
            "seconds": round(time.perf_counter() - started, 3),
        },
    )
    return output


@contextmanager
def library_errors() -> Iterator[None]:
    """Inference's failures as our error types: out of memory, or a library's error (logged)."""
    try:
        yield
    except OpeaMediaError:
        raise
    except (torch.OutOfMemoryError, MemoryError):
        log.exception("inference ran out of memory")
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise OutOfMemory() from None
    except Exception as exc:
        log.exception("inference failed")
        raise ModelFailure(f"inference failed ({type(exc).__name__}); see the log for details") from None
