"""Set the levers that models/tuning.py resolved on a loaded pipeline (torch is imported here)."""

from __future__ import annotations

import logging
from typing import Any

from .tuning import AppliedTuning

log = logging.getLogger(__name__)


def apply_tuning(pipe: Any, tuning: AppliedTuning) -> None:
    """Set the levers on a loaded pipeline (in place)."""
    import torch

    if tuning.threads is not None and tuning.threads != torch.get_num_threads():
        torch.set_num_threads(tuning.threads)
    unet: Any = getattr(pipe, "unet", None)
    if tuning.attention_slicing != "off" and hasattr(unet, "set_attention_slice"):
        pipe.enable_attention_slicing("auto" if tuning.attention_slicing == "on" else "max")
    vae = getattr(pipe, "vae", None)
    # The temporal decoder of SVD decodes in decode_chunk_size chunks instead.
    if vae is not None and hasattr(vae, "enable_slicing") and type(vae).__name__ == "AutoencoderKL":
        vae.enable_slicing() if tuning.vae_slicing else vae.disable_slicing()
        vae.enable_tiling() if tuning.vae_tiling else vae.disable_tiling()
    if unet is not None:
        split_batch(unet, 2 if tuning.guidance_split else 1)
        materialize_broadcast_context(unet)
    if tuning.forward_chunking and hasattr(unet, "enable_forward_chunking"):
        unet.enable_forward_chunking(chunk_size=1, dim=0)
        contiguous_temporal_chunks(unet)
    if tuning.channels_last:
        for name in ("unet", "vae"):
            module = getattr(pipe, name, None)
            if module is not None:
                to_channels_last(module)
    log.info("tuning applied", extra={"tuning": tuning.as_dict()})


def to_channels_last(model: Any) -> None:
    """NHWC (NDHWC) convolution weights, which cuDNN runs faster.

    Not `model.to(memory_format=...)`: SVD's temporal layers hold 5-D weights, which that refuses.
    """
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.weight.data = module.weight.data.to(memory_format=torch.channels_last)
        elif isinstance(module, torch.nn.Conv3d):
            module.weight.data = module.weight.data.to(memory_format=torch.channels_last_3d)


def split_batch(unet: Any, parts: int) -> None:
    """Make `unet` run an evenly divisible batch as `parts` smaller calls (1: undo).

    The pipelines stack the unconditional and conditional inputs of classifier-free guidance
    into one batch; split in two, each call holds half the activations. Every tensor argument
    whose first dimension is the batch is sliced the same way, and the outputs are concatenated.
    """
    if "forward" in vars(unet):
        del unet.forward  # back to the class's own
    if parts <= 1:
        return
    forward = unet.forward

    def split_forward(sample: Any, *args: Any, **kwargs: Any) -> Any:
        n = sample.shape[0]
        if n < parts or n % parts:
            return forward(sample, *args, **kwargs)
        size = n // parts
        outputs = []
        for i in range(parts):
            part = slice(i * size, (i + 1) * size)
            outputs.append(
                forward(
                    sample[part],
                    *(_batch_slice(a, part, n) for a in args),
                    **{k: _batch_slice(v, part, n) for k, v in kwargs.items()},
                )
            )
        return _concat(outputs)

    unet.forward = split_forward


def materialize_broadcast_context(unet: Any) -> None:
    """Give SVD's temporal cross-attention a real tensor instead of a zero-stride view.

    The spatio-temporal transformer broadcasts the image embedding to every latent position. For
    a batch of one (a split guidance batch, or no guidance) that stays a view with stride 0, and
    torch.matmul then expands the key/value weights once per position: for 576x1024 latents that
    is 9216 copies of each weight, gigabytes and minutes per step. Copying the 1-token context to
    those positions first costs a few megabytes.
    """
    for module in unet.modules():
        if type(module).__name__ != "TemporalBasicTransformerBlock" or module.attn2 is None:
            continue
        if getattr(module.attn2, "_opea_media_contiguous", False):
            continue
        module.attn2.register_forward_pre_hook(_contiguous_context, with_kwargs=True)
        module.attn2._opea_media_contiguous = True


def contiguous_temporal_chunks(unet: Any) -> None:
    """Hand SVD's temporal feed-forward layers contiguous chunks.

    With forward chunking, diffusers cuts the temporal blocks' (positions, frames, channels)
    input along the frames: each chunk is a strided view, and a Linear on a strided 3-D view
    runs as a batched matmul over the positions with the weight expanded once per position.
    At 576x1024 that is 9216 copies of a 320x2560 weight, 15 GB: the process was OOM-killed
    at 18 GB instead of peaking near 7. A contiguous copy of the chunk costs a few megabytes.
    """
    for module in unet.modules():
        if type(module).__name__ != "TemporalBasicTransformerBlock":
            continue
        for ff in (getattr(module, "ff_in", None), getattr(module, "ff", None)):
            if ff is not None and not getattr(ff, "_opea_media_contiguous", False):
                ff.register_forward_pre_hook(_contiguous_input)
                ff._opea_media_contiguous = True


def _contiguous_input(module: Any, args: tuple[Any, ...]) -> tuple[Any, ...]:
    return (args[0].contiguous(), *args[1:])


def _contiguous_context(module: Any, args: Any, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    context = kwargs.get("encoder_hidden_states")
    if context is not None and 0 in context.stride():
        kwargs = {**kwargs, "encoder_hidden_states": context.contiguous()}
    return args, kwargs


def _batch_slice(value: Any, part: slice, n: int) -> Any:
    import torch

    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == n:
        return value[part]
    if isinstance(value, dict):
        return {k: _batch_slice(v, part, n) for k, v in value.items()}
    return value


def _concat(outputs: list[Any]) -> Any:
    import torch

    first = outputs[0]
    if isinstance(first, tuple):
        return (torch.cat([o[0] for o in outputs]), *first[1:])
    return type(first)(sample=torch.cat([o.sample for o in outputs]))  # a diffusers UNet output
