"""Peak RSS per configuration, each in a fresh process (benchmarks/probe.py).

Peak memory hardly depends on the step count (each step frees what it allocated), so the runs
use one denoising step. SVD-XT-size clips are measured in two processes per configuration, the
denoising and the decoding, each holding the whole pipeline: the peak of a full run is the larger
of the two, and the decode_chunk_size values then cost one decode each instead of one clip each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from .service import ROOT


def probe(*args: str, env: dict[str, str] | None = None, timeout: float = 7200) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-W", "ignore", "-m", "benchmarks.probe", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )
    if out.returncode != 0:
        return {"error": out.stderr[-1500:], "args": list(args)}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _row(label: str, lever: str, result: dict[str, Any]) -> dict[str, Any]:
    runs = result.get("runs") or [{}]
    return {
        "label": label,
        "lever": lever,
        "dtype": result.get("dtype"),
        "weights_mib": result.get("weights_mib"),
        "rss_after_load_mib": result.get("rss_after_load_mib"),
        "peak_denoise_mib": result.get("peak_denoise_mib"),
        "peak_decode_mib": result.get("peak_decode_mib"),
        "peak_mib": result.get("peak_inference_mib"),
        "load_s": result.get("load_s"),
        "seconds": runs[0].get("seconds"),
        "denoise_s": runs[0].get("denoise_s"),
        "decode_s": runs[0].get("decode_s"),
        "cuda_peak_mib": result.get("cuda_peak_allocated_mib")
        or max((v for k, v in runs[0].items() if k.startswith("cuda_peak_") and v == v), default=None),
        "error": result.get("error"),
        "raw": result,
    }


def text2image_configs(quick: bool) -> list[tuple[str, str, list[str]]]:
    """(label, lever, probe arguments) for SD 2.1-size generations, one step each."""
    base = ["--task", "text2image", "--model", "random:sd21", "--steps", "1"]
    configs = [
        ("SD2.1 512 px float32", "dtype", [*base, "--size", "512", "--dtype", "float32"]),
        ("SD2.1 512 px bfloat16", "dtype", [*base, "--size", "512", "--dtype", "bfloat16"]),
    ]
    if quick:
        return configs
    return configs + [
        ("SD2.1 768 px float32", "dtype", [*base, "--size", "768", "--dtype", "float32"]),
        ("SD2.1 768 px bfloat16", "dtype", [*base, "--size", "768", "--dtype", "bfloat16"]),
        (
            "SD2.1 768 px float32, attention slicing on",
            "attention slicing",
            [*base, "--size", "768", "--dtype", "float32", "--tuning", '{"attention_slicing": "on"}'],
        ),
        (
            "SD2.1 512 px bfloat16 x4 images, VAE slicing off",
            "VAE slicing",
            [
                *base,
                "--size",
                "512",
                "--dtype",
                "bfloat16",
                "--num-images",
                "4",
                "--tuning",
                '{"vae_slicing": "off"}',
            ],
        ),
        (
            "SD2.1 512 px bfloat16 x4 images, VAE slicing on",
            "VAE slicing",
            [*base, "--size", "512", "--dtype", "bfloat16", "--num-images", "4"],
        ),
        (
            "SD2.1 768 px bfloat16 x4 images (a micro-batch of 4)",
            "micro-batching",
            [*base, "--size", "768", "--dtype", "bfloat16", "--num-images", "4"],
        ),
        (
            "SD2.1 1024 px bfloat16, VAE tiling off",
            "VAE tiling",
            [*base, "--size", "1024", "--dtype", "bfloat16", "--tuning", '{"vae_tiling": "off"}'],
        ),
        (
            "SD2.1 1024 px bfloat16, VAE tiling on",
            "VAE tiling",
            [*base, "--size", "1024", "--dtype", "bfloat16"],
        ),
    ]


def image2video_configs(quick: bool) -> list[tuple[str, str, list[str]]]:
    """SVD-XT-size: 576x1024, 25 frames (quick: fewer frames, labelled so), one step."""
    frames = 4 if quick else 25
    decode_frames = 2 if quick else 25
    base = ["--task", "image2video", "--model", "random:svd-xt", "--steps", "1", "--dtype", "bfloat16"]
    configs = [
        (
            f"SVD-XT {frames} frames denoise, forward chunking on",
            "forward chunking",
            [*base, "--frames", str(frames), "--phase", "denoise"],
        ),
        (
            f"SVD-XT {frames} frames denoise, forward chunking off",
            "forward chunking",
            [*base, "--frames", str(frames), "--phase", "denoise", "--tuning", '{"forward_chunking": "off"}'],
        ),
    ]
    for chunk in (1, 2) if quick else (1, 2, 4, 8):
        configs.append(
            (
                f"SVD-XT {decode_frames} frames decode, decode_chunk_size {chunk}",
                "decode_chunk_size",
                [
                    *base,
                    "--frames",
                    str(decode_frames),
                    "--phase",
                    "decode",
                    "--decode-chunk-size",
                    str(chunk),
                ],
            )
        )
    return configs


def cuda_configs() -> list[tuple[str, str, list[str]]]:
    """The GPU figures: full step counts, float16 (the "auto" dtype on CUDA)."""
    sd = ["--task", "text2image", "--model", "random:sd21", "--device", "cuda"]
    svd = ["--task", "image2video", "--model", "random:svd-xt", "--device", "cuda"]
    configs = [
        ("SD2.1 768 px float16, 25 steps", "-", [*sd, "--size", "768", "--steps", "25", "--repeat", "2"]),
        ("SVD-XT 25 frames, 25 steps (decode_chunk_size 8)", "-", [*svd, "--steps", "25"]),
    ]
    for chunk in (8, 25):
        configs.append(
            (
                f"SVD-XT 25 frames decode, decode_chunk_size {chunk}",
                "decode_chunk_size",
                [*svd, "--phase", "decode", "--decode-chunk-size", str(chunk)],
            )
        )
    return configs


def run(
    *,
    quick: bool,
    include: tuple[str, ...] = ("text2image", "image2video"),
    device: str = "cpu",
    log: Any = print,
) -> dict[str, Any]:
    configs = []
    if device == "cuda":
        configs = cuda_configs()
    else:
        if "text2image" in include:
            configs += text2image_configs(quick)
        if "image2video" in include:
            configs += image2video_configs(quick)
    rows = []
    for label, lever, args in configs:
        log(f"memory: {label}")
        rows.append(_row(label, lever, probe(*args)))
    return {"rows": rows}
