"""Image-to-image and inpainting on the text-to-image pipeline's own components: no second copy."""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from ..media.images import fit_image, to_rgb
from ..params import TEXT2IMAGE_DEFAULT_STRENGTH, Text2ImageParams


class EditPipelines:
    """The image-to-image and inpainting pipelines of one loaded text-to-image pipeline.

    Each is built on first use from the same UNet, VAE, text encoder, tokenizer and scheduler
    objects, so the weights stay in memory once and the levers set on
    them (attention slicing, VAE tiling, channels-last, guidance split) hold for every mode.
    """

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    def get(self, *, inpaint: bool) -> Any:
        kind = "inpaint" if inpaint else "img2img"
        with self._lock:
            if kind not in self._built:
                from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionInpaintPipeline

                cls = StableDiffusionInpaintPipeline if inpaint else StableDiffusionImg2ImgPipeline
                # Not from_pipe: it casts the shared modules to float32 unless told the dtype.
                safety = bool(self._pipe.config.get("requires_safety_checker", False))
                pipe = cls(**self._pipe.components, requires_safety_checker=safety)
                pipe.set_progress_bar_config(disable=True)
                self._built[kind] = pipe
            return self._built[kind]


def strength_of(params: Text2ImageParams) -> float:
    return TEXT2IMAGE_DEFAULT_STRENGTH if params.strength is None else params.strength


def denoising_steps(steps: int, strength: float) -> int:
    """How many steps an edit denoises: diffusers' int(steps * strength), and at least one."""
    return max(1, min(int(steps * strength), steps))


def pipeline_strength(steps: int, strength: float) -> float:
    """The strength to hand diffusers so that it runs denoising_steps(steps, strength) steps.

    Below one step diffusers' inpainting refuses the call and its image-to-image denoises
    nothing; the least change that still denoises is the last step of the schedule.
    """
    if int(steps * strength) >= 1:
        return strength
    # 1.5 / steps: int(steps * it) is 1 whatever the float rounding; one step of one is all of it.
    return 1.0 if steps == 1 else 1.5 / steps


def fit_inputs(
    image: Image.Image, mask: Image.Image | None, width: int, height: int
) -> tuple[Image.Image, Image.Image | None]:
    """The init image as RGB at the output size; the mask fitted to the image, then alike, as L.

    The mask is fitted to the image's own size first, so a mask drawn at another size still
    covers the same part of the picture once both are cropped to the output's shape.
    """
    fitted = fit_image(to_rgb(image), width, height)
    if mask is None:
        return fitted, None
    gray = mask.convert("L")
    return fitted, fit_image(fit_image(gray, *image.size), width, height)


def keep_unmasked(init: Image.Image, mask: Image.Image) -> Any:
    """A preview finisher for inpainting: the kept (black) region shows the input image."""

    # Binarized as diffusers binarizes the mask it repaints under.
    repaint = mask.point(lambda v: 255 if v >= 128 else 0)

    def finish(preview: Image.Image, index: int) -> Image.Image:
        return Image.composite(preview, init, repaint)

    return finish
