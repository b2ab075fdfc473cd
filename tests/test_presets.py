"""The full-size random-weight presets: the real architectures, counted without allocating them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
from torch import nn

from opea_media.errors import ModelUnavailable
from opea_media.models import ModelRegistry, presets, sources
from opea_media.params import Text2ImageParams

# The parameter counts of the published checkpoints (sum of numel over each component's tensors).
SD21 = {"unet": 865_910_724, "text_encoder": 340_387_840, "vae": 83_653_863}
SVD_XT = {"unet": 1_524_623_082, "image_encoder": 632_076_800, "vae": 97_742_847}


def test_sd21_has_the_published_parameter_counts() -> None:
    counts = presets.parameter_counts("random:sd21")
    assert counts == SD21
    # The round figures, as a reader checks them.
    assert round(counts["unet"] / 1e6) == 866 and round(counts["text_encoder"] / 1e6) == 340
    assert round(counts["vae"] / 1e6) == 84


def test_svd_xt_has_the_published_parameter_counts() -> None:
    counts = presets.parameter_counts("random:svd-xt")
    assert counts == SVD_XT
    assert round(counts["unet"] / 1e9, 1) == 1.5 and round(counts["image_encoder"] / 1e6) == 632


def test_components_are_built_without_memory() -> None:
    for name in presets.PRESETS:
        for model in presets.get_preset(name).components().values():
            assert {p.device.type for p in model.parameters()} == {"meta"}


def test_configs_are_those_of_the_real_checkpoints() -> None:
    sd = presets.get_preset("random:sd21").components()
    unet = sd["unet"].config
    assert unet.sample_size * 8 == 768 and unet.cross_attention_dim == 1024
    assert tuple(unet.attention_head_dim) == (5, 10, 20, 20)
    assert unet.use_linear_projection and unet.upcast_attention
    text = sd["text_encoder"].config
    assert (text.hidden_size, text.num_hidden_layers, text.num_attention_heads) == (1024, 23, 16)
    assert (text.intermediate_size, text.projection_dim, text.vocab_size) == (4096, 512, 49408)
    assert tuple(sd["vae"].config.block_out_channels) == (128, 256, 512, 512)

    svd = presets.get_preset("random:svd-xt").components()
    unet = svd["unet"].config
    assert (unet.num_frames, unet.in_channels, unet.out_channels, unet.sample_size) == (25, 8, 4, 96)
    assert tuple(unet.num_attention_heads) == (5, 10, 20, 20)
    assert (unet.addition_time_embed_dim, unet.projection_class_embeddings_input_dim) == (256, 768)
    vision = svd["image_encoder"].config
    assert (vision.hidden_size, vision.num_hidden_layers, vision.patch_size) == (1280, 32, 14)
    assert (vision.intermediate_size, vision.projection_dim, vision.image_size) == (5120, 1024, 224)
    assert type(svd["vae"]).__name__ == "AutoencoderKLTemporalDecoder"


def test_presets_resolve_for_their_task_only(cache_dir: Path) -> None:
    assert set(sources.PRESET_MODELS) == set(presets.PRESETS)
    for name, preset in presets.PRESETS.items():
        assert sources.PRESET_MODELS[name] == preset.task
    source = sources.resolve("text2image", "random:sd21", cache_root=cache_dir)
    assert (source.kind, source.location) == ("preset", "random:sd21")
    with pytest.raises(
        ModelUnavailable, match="random:svd-xt is a preset for image2video, not for text2image"
    ):
        sources.resolve("text2image", "random:svd-xt", cache_root=cache_dir)
    with pytest.raises(ModelUnavailable, match="unknown preset 'random:sd15'; the presets are random:sd21"):
        sources.resolve("text2image", "random:sd15", cache_root=cache_dir)
    with pytest.raises(ModelUnavailable, match=r"neither a built-in \(tiny, shapes, random:sd21, random:svd-xt\)"):
        sources.resolve("text2image", "not a model!", cache_root=cache_dir)


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(256, 64)
        self.conv = nn.Conv2d(16, 8, 3)
        self.norm = nn.GroupNorm(4, 64)
        self.embedding = nn.Embedding(1000, 32)
        self.register_buffer("position_ids", torch.arange(77))
        self.register_buffer("scale", torch.full((3,), 0.5))


def _empty_block() -> _Block:
    with presets.init_empty_weights(include_buffers=False):
        return _Block()


def test_random_fill_scales_each_tensor_and_keeps_buffers() -> None:
    block = _empty_block()
    presets.RandomFill(dtype=torch.bfloat16, device="cpu", seed=1).materialize(block)
    assert {p.dtype for p in block.parameters()} == {torch.bfloat16}
    assert not any(p.requires_grad for p in block.parameters()) and not block.training
    assert torch.count_nonzero(block.linear.bias) == 0 and torch.all(block.norm.weight == 1)
    assert block.linear.weight.float().std().item() == pytest.approx(1 / 16, rel=0.1)
    assert block.conv.weight.float().std().item() == pytest.approx(1 / 12, rel=0.15)
    assert block.embedding.weight.float().std().item() == pytest.approx(0.02, rel=0.1)
    # Integer buffers keep their values and type; float ones follow the dtype.
    assert torch.equal(block.position_ids, torch.arange(77))
    assert block.scale.dtype is torch.bfloat16 and torch.all(block.scale == 0.5)


def test_random_fill_is_seeded_and_tensors_differ() -> None:
    a, b, c = _empty_block(), _empty_block(), _empty_block()
    presets.RandomFill(dtype=torch.float32, device="cpu", seed=7).materialize(a)
    presets.RandomFill(dtype=torch.float32, device="cpu", seed=7).materialize(b)
    presets.RandomFill(dtype=torch.float32, device="cpu", seed=8).materialize(c)
    assert torch.equal(a.linear.weight, b.linear.weight)
    assert not torch.equal(a.linear.weight, c.linear.weight)


def test_tensors_larger_than_the_pool_are_filled_throughout() -> None:
    with presets.init_empty_weights(include_buffers=False):
        big = nn.Linear(presets.RandomFill.POOL_SIZE // 1024 + 7, 1024 + 3)
    presets.RandomFill(dtype=torch.float32, device="cpu").materialize(big)
    assert torch.isfinite(big.weight).all() and big.weight.abs().amin(dim=1).lt(1).all()
    assert torch.count_nonzero(big.weight[-1]) > 1000


def test_sd21_preset_loads_through_the_registry_and_generates(cache_dir: Path) -> None:
    registry = ModelRegistry(device="cpu", dtype="bfloat16", cache_dir=cache_dir)
    started = time.perf_counter()
    model = registry.text2image("random:sd21")
    assert time.perf_counter() - started < 60  # seconds, not the minutes of a default init
    assert model.native_size == (768, 768)
    assert model.pipe.unet.dtype is torch.bfloat16
    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
    params = Text2ImageParams(prompt="a red fox", num_inference_steps=1, height=64, width=64, seed=0)
    [[image]] = model.generate([params])
    assert image.size == (64, 64)
