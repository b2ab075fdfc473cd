"""What a generated file says about how it was made (PNG text chunks, as other SD tools write)."""

from __future__ import annotations

from . import __version__
from .params import Text2ImageParams


def text2image_metadata(params: Text2ImageParams, *, model: str) -> dict[str, str]:
    """PNG text fields; `parameters` is the AUTOMATIC1111 layout other tools already read."""
    size = f"{params.width}x{params.height}"
    lines = [params.prompt]
    if params.negative_prompt:
        lines.append(f"Negative prompt: {params.negative_prompt}")
    settings = (
        f"Steps: {params.num_inference_steps}, Sampler: {params.scheduler}, "
        f"CFG scale: {params.guidance_scale}, Seed: {params.seed}, Size: {size}, Model: {model}"
    )
    if params.strength is not None:  # an image-to-image or inpainting run; A1111's words for it
        settings += f", Denoising strength: {params.strength}"
    lines.append(settings)
    extra = {} if params.strength is None else {"strength": str(params.strength)}
    return {
        "parameters": "\n".join(lines),
        "prompt": params.prompt,
        "negative_prompt": params.negative_prompt or "",
        "seed": str(params.seed),
        "steps": str(params.num_inference_steps),
        "guidance_scale": str(params.guidance_scale),
        "scheduler": params.scheduler,
        "size": size,
        "model": model,
        **extra,
        "software": f"opea-media {__version__}",
    }
