"""The memory/speed levers: their defaults, their sources (flags, environment) and their effect."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from opea_media.cli import cli
from opea_media.commands import animate as animate_command
from opea_media.commands import generate_image as generate_command
from opea_media.errors import InvalidInput
from opea_media.models import ModelRegistry, pipeline_tuning, tuning
from opea_media.models.pipeline_tuning import apply_tuning
from opea_media.models.tuning import AppliedTuning, Tuning
from opea_media.params import Image2VideoParams, Text2ImageParams


def test_defaults_per_device() -> None:
    cpu = Tuning().resolve("text2image", "cpu")
    assert (cpu.attention_slicing, cpu.vae_slicing, cpu.vae_tiling, cpu.channels_last) == (
        "off",
        True,
        True,
        True,
    )
    assert not cpu.forward_chunking
    assert cpu.images_per_call == tuning.CPU_IMAGES_PER_CALL == 2
    assert Tuning().resolve("text2image", "cuda").images_per_call == tuning.CUDA_IMAGES_PER_CALL
    video = Tuning().resolve("image2video", "cpu")
    assert not video.channels_last
    assert video.forward_chunking and video.decode_chunk_size == tuning.CPU_DECODE_CHUNK_SIZE
    assert video.guidance_split
    gpu = Tuning().resolve("image2video", "cuda")
    assert gpu.channels_last and gpu.decode_chunk_size == tuning.CUDA_DECODE_CHUNK_SIZE
    assert gpu.threads is None


def test_explicit_choices_win() -> None:
    chosen = Tuning(
        guidance_split="off",
        attention_slicing="max",
        vae_slicing="off",
        vae_tiling="off",
        forward_chunking="off",
        channels_last="on",
        decode_chunk_size=5,
        images_per_call=3,
        threads=3,
        backend="openvino",
    ).resolve("image2video", "cpu")
    assert chosen == AppliedTuning(
        guidance_split=False,
        attention_slicing="max",
        vae_slicing=False,
        vae_tiling=False,
        forward_chunking=False,
        channels_last=True,
        decode_chunk_size=5,
        images_per_call=3,
        threads=3,
        backend="openvino",
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"attention_slicing": "half"}, "attention_slicing: must be one of auto, off, on, max, got 'half'"),
        ({"vae_tiling": "yes"}, "vae_tiling: must be one of auto, on, off, got 'yes'"),
        ({"decode_chunk_size": 0}, "decode_chunk_size: must be between 1 and 128"),
        ({"threads": 0}, "threads: must be between 1 and 1024"),
        ({"images_per_call": 0}, "images_per_call: must be between 1 and 1024"),
        ({"omp_wait_policy": "spin"}, "omp_wait_policy: must be one of auto, passive, active, got 'spin'"),
        ({"backend": "onnx"}, "backend: must be one of auto, torch, openvino, got 'onnx'"),
    ],
)
def test_bad_values_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        Tuning(**kwargs)  # type: ignore[arg-type]


def test_cpu_quota_caps_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    (tmp_path / "cpu.max").write_text("150000 100000\n")  # docker run --cpus=1.5
    assert tuning.cpu_quota_threads(tmp_path) == 2
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert tuning.cpu_quota_threads(tmp_path) is None
    (tmp_path / "cpu.max").write_text("6400000 100000\n")  # more than the machine has
    assert tuning.cpu_quota_threads(tmp_path) is None
    assert tuning.cpu_quota_threads(tmp_path / "absent") is None


def test_cpu_quota_of_cgroup_v1_caps_the_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Docker 20.10 on a cgroup v1 host: the quota is in cpu/cpu.cfs_quota_us, -1 for none.
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    cpu = tmp_path / "cpu"
    cpu.mkdir()
    (cpu / "cpu.cfs_period_us").write_text("100000\n")
    (cpu / "cpu.cfs_quota_us").write_text("200000\n")  # docker run --cpus=2
    assert tuning.cpu_quota_threads(tmp_path) == 2
    (cpu / "cpu.cfs_quota_us").write_text("-1\n")
    assert tuning.cpu_quota_threads(tmp_path) is None


def test_auto_dtype() -> None:
    assert tuning.auto_dtype("text2image", "cuda") == "float16"
    assert tuning.auto_dtype("text2image", "cpu", cpu_has_bf16=True) == "bfloat16"
    assert tuning.auto_dtype("text2image", "cpu", cpu_has_bf16=False) == "float32"
    # SVD-XT's float32 weights alone (9 GB) exceed the 8G container limit.
    assert tuning.auto_dtype("image2video", "cpu", cpu_has_bf16=False) == "bfloat16"


# The flags lines of three processors, as /proc/cpuinfo lists them (abridged).
_ZEN3 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
_SKYLAKE_SP = "model name\t: Intel Xeon Gold 6148\nflags\t\t: avx2 avx512f avx512bw avx512vl avx512dq\n"
_SAPPHIRE_RAPIDS = (
    "model name\t: Intel Xeon Platinum 8480+\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"
)


def test_native_bfloat16_means_avx512_bf16_or_amx_not_any_avx512() -> None:
    from opea_media.models.cpu import cpu_supports_bf16

    # Skylake-SP passes torch's own check (AVX-512 BW/VL/DQ) but emulates bfloat16: slower than fp32.
    assert [cpu_supports_bf16(text) for text in (_ZEN3, _SKYLAKE_SP, _SAPPHIRE_RAPIDS)] == [
        False,
        False,
        True,
    ]
    assert cpu_supports_bf16("") is False  # no flags listed: nothing known, float32 is the safe choice


def test_registry_picks_the_dtype_per_task(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("opea_media.models.cpu.cpu_supports_bf16", lambda: False)
    registry = ModelRegistry(device="cpu", cache_dir=cache_dir)
    assert registry.placement_for("text2image").dtype is torch.float32
    assert registry.placement_for("image2video").dtype is torch.bfloat16
    explicit = ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir)
    assert explicit.placement_for("image2video").dtype is torch.float32


def test_levers_reach_the_text2image_pipeline(cache_dir: Path) -> None:
    on = Tuning(attention_slicing="max", channels_last="on")
    pipe = (
        ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir, tuning=on).text2image("tiny").pipe
    )
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    processors = {type(p).__name__ for p in pipe.unet.attn_processors.values()}
    assert processors == {"SlicedAttnProcessor"}
    assert pipe.unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)

    off = Tuning(vae_slicing="off", vae_tiling="off")
    pipe = (
        ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir, tuning=off).text2image("tiny").pipe
    )
    assert not pipe.vae.use_slicing and not pipe.vae.use_tiling
    assert {type(p).__name__ for p in pipe.unet.attn_processors.values()} == {"AttnProcessor2_0"}


def test_levers_reach_the_image2video_pipeline(cache_dir: Path) -> None:
    # channels_last as on CUDA: SVD's 5-D temporal convolution weights must not break it.
    registry = ModelRegistry(
        device="cpu",
        dtype="float32",
        cache_dir=cache_dir,
        tuning=Tuning(decode_chunk_size=3, channels_last="on"),
    )
    model = registry.image2video("tiny")
    blocks = [m for m in model.pipe.unet.modules() if hasattr(m, "_chunk_size")]
    assert blocks and all(m._chunk_size == 1 for m in blocks)
    temporal = [m for m in model.pipe.unet.modules() if type(m).__name__ == "TemporalBasicTransformerBlock"]
    assert temporal and all(m.attn2._opea_media_contiguous for m in temporal)
    conv3d = [m for m in model.pipe.unet.modules() if isinstance(m, torch.nn.Conv3d)]
    assert conv3d and all(m.weight.is_contiguous(memory_format=torch.channels_last_3d) for m in conv3d)
    frames = model.generate(
        Image.new("RGB", (64, 64)), Image2VideoParams(num_frames=2, num_inference_steps=1, seed=0)
    )
    assert len(frames) == 2
    # A request without a chunk size gets the tuned one, and reports it.
    assert model.complete(Image2VideoParams()).decode_chunk_size == 3
    assert model.complete(Image2VideoParams(decode_chunk_size=7)).decode_chunk_size == 7


def test_apply_tuning_sets_the_thread_count() -> None:
    before = torch.get_num_threads()
    try:
        applied = Tuning(threads=1).resolve("text2image", "cpu")
        apply_tuning(object(), applied)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_flags_and_environment_reach_the_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: dict[str, object] = {}
    monkeypatch.setattr(generate_command, "run", lambda **kwargs: seen.update(kwargs))
    monkeypatch.setattr(animate_command, "run", lambda **kwargs: seen.update(kwargs))
    runner = CliRunner()
    result = runner.invoke(
        cli,
        [
            "generate-image",
            "x",
            "--attention-slicing",
            "on",
            "--vae-tiling",
            "off",
            "--threads",
            "2",
            "--guidance-split",
            "off",
            "--images-per-call",
            "4",
        ],
        env={"OPEA_MEDIA_VAE_SLICING": "OFF", "OPEA_MEDIA_CHANNELS_LAST": "on", "OPEA_MEDIA_THREADS": "7"},
    )
    assert result.exit_code == 0, result.output
    assert seen["model"].tuning == Tuning(  # type: ignore[attr-defined]
        guidance_split="off",
        attention_slicing="on",
        vae_slicing="off",
        vae_tiling="off",
        channels_last="on",
        images_per_call=4,
        threads=2,
    )
    result = runner.invoke(
        cli,
        ["animate", str(tmp_path / "in.png"), "--forward-chunking", "off"],
        env={
            "OPEA_MEDIA_DECODE_CHUNK_SIZE": "4",
            "OPEA_MEDIA_THREADS": "auto",
            "OPEA_MEDIA_OMP_WAIT_POLICY": "active",
        },
    )
    assert result.exit_code == 0, result.output
    assert seen["model"].tuning == Tuning(  # type: ignore[attr-defined]
        forward_chunking="off", decode_chunk_size=4, omp_wait_policy="active"
    )


def test_help_names_every_lever() -> None:
    runner = CliRunner()
    text = runner.invoke(cli, ["generate-image", "--help"], terminal_width=200).output
    for flag in (
        "--guidance-split",
        "--attention-slicing",
        "--vae-slicing",
        "--vae-tiling",
        "--channels-last",
        "--images-per-call",
        "--threads",
        "--omp-wait-policy",
    ):
        assert flag in text
    assert "--forward-chunking" not in text and "--decode-chunk-size" not in text
    text = runner.invoke(cli, ["animate", "--help"], terminal_width=200).output
    for flag in (
        "--forward-chunking",
        "--decode-chunk-size",
        "OPEA_MEDIA_DECODE_CHUNK_SIZE",
        "--channels-last",
    ):
        assert flag in text
    assert "--vae-tiling" not in text


def test_openmp_workers_sleep_unless_the_user_says_otherwise() -> None:
    env: dict[str, str] = {}
    tuning.prepare_threading(environ=env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}
    env = {"OMP_WAIT_POLICY": "ACTIVE"}
    tuning.prepare_threading(environ=env)
    assert env == {"OMP_WAIT_POLICY": "ACTIVE"}
    tuning.prepare_threading("passive", environ=env)
    assert env == {"OMP_WAIT_POLICY": "PASSIVE"}


# Runs the command in a fresh process and reports OMP_WAIT_POLICY at the moment torch is imported
# (which is when OpenMP reads it), then stops there.
_AT_TORCH_IMPORT = """
import os, sys
class Spy:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            print(os.environ.get("OMP_WAIT_POLICY"), flush=True)
            os._exit(0)
sys.meta_path.insert(0, Spy())
from opea_media.cli import cli
cli(sys.argv[1:], prog_name="opea-media")
"""


@pytest.mark.parametrize(
    ("args", "env", "policy"),
    [
        ([], {}, "PASSIVE"),
        ([], {"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"),  # a user's own setting wins over auto
        (["--omp-wait-policy", "active"], {"OMP_WAIT_POLICY": "PASSIVE"}, "ACTIVE"),
        ([], {"OPEA_MEDIA_OMP_WAIT_POLICY": "active"}, "ACTIVE"),
    ],
)
def test_the_wait_policy_is_set_before_torch_loads(
    tmp_path: Path, args: list[str], env: dict[str, str], policy: str
) -> None:
    clean = {
        k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY" and k != "OPEA_MEDIA_OMP_WAIT_POLICY"
    }
    command = ["generate-image", "a cat", "-o", str(tmp_path / "cat.png"), "--model", "tiny", *args]
    out = subprocess.run(
        [sys.executable, "-c", _AT_TORCH_IMPORT, *command],
        capture_output=True,
        text=True,
        env={**clean, **env},
        timeout=120,
    )
    assert out.stdout.split() == [policy], out.stderr


def test_serve_sets_the_wait_policy_before_the_model_loads() -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    command = [
        "serve",
        "--model",
        "tiny",
        "--host",
        "127.0.0.1",
        "--port",
        port,
        "--omp-wait-policy",
        "active",
    ]
    clean = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    out = subprocess.run(
        [sys.executable, "-c", _AT_TORCH_IMPORT, *command],
        capture_output=True,
        text=True,
        env=clean,
        timeout=120,
    )
    assert out.stdout.split() == ["ACTIVE"], out.stderr


def test_guidance_split_gives_the_same_pixels(cache_dir: Path) -> None:
    images = {}
    for split in ("off", "on"):
        registry = ModelRegistry(
            device="cpu", dtype="float32", cache_dir=cache_dir, tuning=Tuning(guidance_split=split)
        )
        t2i = registry.text2image("tiny")
        batch = [
            t2i.complete(Text2ImageParams(prompt=p, num_inference_steps=3, seed=k, num_images_per_prompt=2))
            for k, p in enumerate(("a cat", "a dog"))
        ]
        i2v = registry.image2video("tiny")
        clip = i2v.generate(
            Image.new("RGB", (64, 64), "red"),
            Image2VideoParams(num_frames=3, num_inference_steps=2, seed=0, height=64, width=64),
        )
        images[split] = [np.asarray(i, dtype=np.int16) for r in t2i.generate(batch) for i in r]
        images[split] += [np.asarray(f, dtype=np.int16) for f in clip]
    # Each sample's arithmetic is unchanged; batched matrix kernels may round differently by a level.
    assert all(np.abs(a - b).max() <= 2 for a, b in zip(images["off"], images["on"], strict=True))


def test_images_per_call_bounds_the_unet_batch_and_keeps_the_pixels(cache_dir: Path) -> None:
    def run(images_per_call: int, n: int) -> tuple[list[list[np.ndarray]], list[int], list[tuple[int, int]]]:
        tuned = Tuning(images_per_call=images_per_call)
        model = ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir, tuning=tuned).text2image(
            "tiny"
        )
        unet_batches: list[int] = []
        model.pipe.unet.register_forward_pre_hook(lambda m, args: unet_batches.append(args[0].shape[0]))
        progress: list[tuple[int, int]] = []
        batch = [
            Text2ImageParams(
                prompt=prompt, num_images_per_prompt=n, num_inference_steps=2, height=64, width=64, seed=seed
            )
            for prompt, seed in (("a red fox", 1), ("a blue bird", 2), ("a green frog", 3))
        ]
        out = model.generate(batch, on_step=lambda step, total: progress.append((step, total)))
        return (
            [[np.asarray(image, dtype=np.int16) for image in images] for images in out],
            unet_batches,
            progress,
        )

    for n in (1, 3):  # whole requests per call; slices of one request per call
        reference, whole, _ = run(8 * 3, n)
        capped, batches, progress = run(2, n)
        assert max(whole) == 2 * 3 * n and max(batches) <= 2 * 2  # classifier-free guidance doubles it
        assert [len(images) for images in capped] == [n, n, n]
        for got, want in zip(capped, reference, strict=True):
            assert all(np.abs(a - b).max() <= 1 for a, b in zip(got, want, strict=True))
        total = progress[-1][1]
        # One report per UNet call (steps x pipeline calls), counting up to one total.
        assert [step for step, _ in progress] == list(range(1, total + 1)) and total == len(batches)


def test_split_batch_slices_every_batched_argument_and_undoes() -> None:
    from types import SimpleNamespace

    calls = []

    class Net(torch.nn.Module):
        def forward(self, sample, t, encoder_hidden_states=None, added=None, return_dict=True):  # type: ignore[no-untyped-def]
            calls.append((sample.shape[0], t.shape, encoder_hidden_states.shape[0], added["ids"].shape[0]))
            out = sample * 2
            return (out,) if not return_dict else SimpleNamespace(sample=out)

    net = Net()
    pipeline_tuning.split_batch(net, 2)
    x = torch.arange(8.0).reshape(4, 2)
    out = net(
        x,
        torch.tensor(5),
        encoder_hidden_states=torch.zeros(4, 3),
        added={"ids": torch.ones(4, 1)},
        return_dict=False,
    )
    assert torch.equal(out[0], x * 2) and calls == [(2, torch.Size([]), 2, 2)] * 2
    calls.clear()
    net(
        torch.ones(3, 2),
        torch.tensor(5),
        encoder_hidden_states=torch.zeros(3, 3),
        added={"ids": torch.ones(3, 1)},
    )
    assert [c[0] for c in calls] == [3]  # an odd batch runs whole
    calls.clear()
    pipeline_tuning.split_batch(net, 1)
    net(x, torch.tensor(5), encoder_hidden_states=torch.zeros(4, 3), added={"ids": torch.ones(4, 1)})
    assert [c[0] for c in calls] == [4]


def test_forward_chunking_feeds_temporal_layers_contiguous_chunks_and_keeps_the_frames(
    cache_dir: Path,
) -> None:
    # diffusers chunks SVD's temporal feed-forward along the frames: strided views, on which a
    # Linear expanded its weight once per latent position (15 GB at 576x1024; OOM-killed).
    def clip(forward_chunking: str) -> tuple[list[bool], np.ndarray]:
        tuned = Tuning(forward_chunking=forward_chunking)
        model = ModelRegistry(device="cpu", dtype="float32", cache_dir=cache_dir, tuning=tuned).image2video(
            "tiny"
        )
        seen: list[bool] = []
        for block in model.pipe.unet.modules():
            if type(block).__name__ == "TemporalBasicTransformerBlock":
                for ff in (block.ff_in, block.ff):
                    ff.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous()))
        image = Image.linear_gradient("L").resize((64, 64)).convert("RGB")
        frames = model.generate(image, Image2VideoParams(num_frames=3, num_inference_steps=2, seed=3))
        return seen, np.stack([np.asarray(f, dtype=np.int16) for f in frames])

    chunked_inputs, chunked = clip("on")
    _, whole = clip("off")
    assert chunked_inputs and all(chunked_inputs)
    assert np.abs(chunked - whole).max() <= 1 and whole.std() > 5  # the same, non-blank clip


def test_broadcast_context_reaches_attention_as_a_real_tensor() -> None:
    seen = []

    class Attention(torch.nn.Module):
        def forward(self, hidden_states, encoder_hidden_states=None):  # type: ignore[no-untyped-def]
            seen.append(encoder_hidden_states.stride())
            return hidden_states

    class TemporalBasicTransformerBlock(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn2 = Attention()

    net = torch.nn.Sequential(TemporalBasicTransformerBlock())
    pipeline_tuning.materialize_broadcast_context(net)
    pipeline_tuning.materialize_broadcast_context(net)  # idempotent: one hook
    context = torch.ones(1, 1, 8).expand(6, 1, 8)  # what SVD passes for a batch of one
    net[0].attn2(torch.zeros(6, 2, 8), encoder_hidden_states=context)
    assert seen == [(8, 8, 1)]
