"""Image-to-image and inpainting on the text-to-image pipeline's own components: no second copy."""

from __future__ import annotations

import threading
from typing import Any

from PIL import Image

from ..errors import InvalidInput
from ..media.images import fit_image, to_rgb
from ..params import TEXT2IMAGE_DEFAULT_STRENGTH, Text2ImageParams

# The image-to-image and inpainting classes of each text-to-image pipeline class that has them.
EDIT_PIPELINES: dict[str, tuple[str, str]] = {
    "StableDiffusionPipeline": ("StableDiffusionImg2ImgPipeline", "StableDiffusionInpaintPipeline"),
    "StableDiffusionXLPipeline": ("StableDiffusionXLImg2ImgPipeline", "StableDiffusionXLInpaintPipeline"),
}


class EditPipelines:
    """The image-to-image and inpainting pipelines of one loaded text-to-image pipeline.

    Each is built on first use from the same UNet, VAE, text encoders, tokenizers and scheduler
    objects, so the weights stay in memory once and the levers set on them (attention slicing,
    VAE tiling, channels-last, guidance split) hold for every mode. Not diffusers' from_pipe: it
    casts the shared modules to float32 unless told the dtype, and warns on every call.
    """

    def __init__(self, pipe: Any) -> None:
        self._pipe = pipe
        self._built: dict[str, Any] = {}
        self._lock = threading.Lock()

    @property
    def supported(self) -> bool:
        return type(self._pipe).__name__ in EDIT_PIPELINES

    def get(self, *, inpaint: bool) -> Any:
        kind = "inpaint" if inpaint else "img2img"
        with self._lock:
            if kind not in self._built:
                self._built[kind] = self._build(inpaint)
            return self._built[kind]

    def _build(self, inpaint: bool) -> Any:
        import diffusers

        base = self._pipe
        names = EDIT_PIPELINES.get(type(base).__name__)
        if names is None:
            raise InvalidInput(
                f"this model ({type(base).__name__}) cannot edit images; image-to-image and inpainting "
                "need a Stable Diffusion or SDXL pipeline"
            )
        cls = getattr(diffusers, names[inpaint])
        modules, options = cls._get_signature_keys(cls)
        pipe = cls(
            **{k: v for k, v in base.components.items() if k in modules},
            **{k: base.config[k] for k in options if k in base.config},
        )
        pipe.set_progress_bar_config(disable=True)
        return pipe


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
