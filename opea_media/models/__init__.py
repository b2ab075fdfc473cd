"""Models: the only layer that imports torch, diffusers and transformers, and only when a model loads.

Importing this package (or `models.registry`, `models.tuning`, `models.handle`) is cheap: the CLI
and the service build registries and read the lever policy without paying for torch.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from .sources import disable_telemetry
from .tuning import prepare_threading

# Before diffusers / huggingface_hub / torch's OpenMP read them at import time.
disable_telemetry()
prepare_threading()
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .handle import ModelHandle, ModelState  # noqa: E402
from .registry import ModelRegistry  # noqa: E402

if TYPE_CHECKING:
    from .device import Placement, choose_placement
    from .image2video import Image2VideoModel
    from .text2image import Text2ImageModel

_LAZY = {
    "Placement": "device",
    "choose_placement": "device",
    "Image2VideoModel": "image2video",
    "Text2ImageModel": "text2image",
}


def __getattr__(name: str) -> Any:
    """The torch-importing names, imported on first use."""
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)


__all__ = [
    "Image2VideoModel",
    "ModelHandle",
    "ModelRegistry",
    "ModelState",
    "Placement",
    "Text2ImageModel",
    "choose_placement",
]
