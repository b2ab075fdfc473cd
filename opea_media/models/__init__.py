"""Models: the only layer that imports torch, diffusers and transformers, and only when touched.

`import opea_media.models.tuning` (the levers) stays light, so the CLI builds --help from it; the
names below import their module, and torch with it, on first use (PEP 562).
"""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any

from .sources import disable_telemetry
from .tuning import prepare_threading

# Cheap, and before diffusers / huggingface_hub / torch's OpenMP read them at import time. A front
# door given an explicit --omp-wait-policy sets it before touching a model; "auto" changes nothing.
disable_telemetry()
prepare_threading()
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

if TYPE_CHECKING:
    from .device import Placement as Placement
    from .device import choose_placement as choose_placement
    from .image2video import Image2VideoModel as Image2VideoModel
    from .registry import LoadedModel as LoadedModel
    from .registry import ModelHandle as ModelHandle
    from .registry import ModelRegistry as ModelRegistry
    from .registry import ModelState as ModelState
    from .text2image import Text2ImageModel as Text2ImageModel

_HOMES = {
    "Placement": "device",
    "choose_placement": "device",
    "Image2VideoModel": "image2video",
    "LoadedModel": "registry",
    "ModelHandle": "registry",
    "ModelRegistry": "registry",
    "ModelState": "registry",
    "Text2ImageModel": "text2image",
}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_HOMES[name]}", __name__), name)


__all__ = sorted(_HOMES)
