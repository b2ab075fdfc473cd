"""Device and dtype choice: CUDA when present, else the CPU; per-task "auto" dtypes: tuning.auto_dtype."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import DEVICES, DTYPES
from ..errors import InvalidInput


@dataclass(frozen=True)
class Placement:
    device: str
    dtype: torch.dtype

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")


def choose_placement(device: str = "auto", dtype: str = "auto") -> Placement:
    """Resolve `auto` and refuse an explicit choice this machine cannot honour.

    A dtype of "auto" becomes float16 on CUDA and float32 on the CPU here; the registry replaces
    that with the task's own choice (tuning.auto_dtype).
    """
    if device not in DEVICES:
        raise InvalidInput(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}", field="device")
    if dtype not in DTYPES:
        raise InvalidInput(f"unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}", field="dtype")
    has_cuda = torch.cuda.is_available()
    if device == "cuda" and not has_cuda:
        # A silent CPU fallback would turn a 3 s request into a 3 min one without a word.
        raise InvalidInput(
            "CUDA was requested but no CUDA GPU is available to PyTorch "
            f"(torch {torch.__version__}); use --device cpu or --device auto",
            field="device",
        )
    resolved = ("cuda" if has_cuda else "cpu") if device == "auto" else device
    if dtype == "auto":
        torch_dtype = torch.float16 if resolved == "cuda" else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    return Placement(resolved, torch_dtype)
