"""Models: the only layer that imports torch, diffusers and transformers."""

from __future__ import annotations

import os

from .sources import disable_telemetry
from .tuning import prepare_threading

# Before diffusers / huggingface_hub / torch's OpenMP read them at import time.
disable_telemetry()
prepare_threading()
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

from .device import Placement, choose_placement  # noqa: E402
from .image2video import Image2VideoModel  # noqa: E402
from .registry import LoadedModel, ModelHandle, ModelRegistry, ModelState  # noqa: E402
from .text2image import Text2ImageModel  # noqa: E402


def _quiet_library_progress_bars() -> None:
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


_quiet_library_progress_bars()

__all__ = [
    "Image2VideoModel",
    "LoadedModel",
    "ModelHandle",
    "ModelRegistry",
    "ModelState",
    "Placement",
    "Text2ImageModel",
    "choose_placement",
]
