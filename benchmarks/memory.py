"""Peak RSS per configuration, each in a fresh process (benchmarks/probe.py).

Peak memory hardly depends on the step count (each step frees what it allocated), so the runs
use one denoising step. SVD-XT-size clips are measured in two processes per configuration, the
denoising and the decoding, each holding the whole pipeline: the peak of a full run is the larger
of the two, and the decode_chunk_size values then cost one decode each instead of one clip each.

The layouts comparison (`layouts`) loads each preset the way a user's checkpoint loads: saved once
by diffusers' save_pretrained into folders laid out as the Hub repos are (full-precision files,
`variant="fp16"` files, and for SD 2.1 both side by side), each loaded with `--model FOLDER` in a
fresh process beside the in-memory preset, so that memory-mapped weight pages (RssFile) are
counted as a container counts them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
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


# Saves the preset once in float32 (`full`) and, converted, in float16 as variant="fp16" (`fp16`):
# the same weights in both, as in a Hub repo that has both.
_SAVE_LAYOUTS = """
import sys, torch
from pathlib import Path
from opea_media.models.presets import build_preset
name, root = sys.argv[1], Path(sys.argv[2])
pipe = build_preset(name, dtype=torch.float32)
pipe.save_pretrained(root / "full")
pipe.to(torch.float16).save_pretrained(root / "fp16", variant="fp16")
(root / "saved").touch()
"""


def layout_folders(cache: Path, preset: str) -> dict[str, Path]:
    """`full`, `fp16` and `both` (full and fp16 files side by side) folders of `preset`.

    `both` holds hard links to the other two folders' weight files: no more disk.
    """
    root = cache / "layouts" / preset.replace(":", "-")
    if not (root / "saved").is_file():
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        subprocess.run(
            [sys.executable, "-W", "ignore", "-c", _SAVE_LAYOUTS, preset, str(root)], cwd=ROOT, check=True
        )
    folders = {kind: root / kind for kind in ("full", "fp16", "both")}
    if not (folders["both"] / "model_index.json").is_file():
        shutil.rmtree(folders["both"], ignore_errors=True)
        shutil.copytree(folders["full"], folders["both"], copy_function=_link_weights)
        for weights in folders["fp16"].rglob("*.fp16.safetensors"):
            os.link(weights, folders["both"] / weights.relative_to(folders["fp16"]))
    return folders


def _link_weights(src: str, dst: str) -> None:
    (os.link if src.endswith(".safetensors") else shutil.copy2)(src, dst)


def weights_gib(folder: Path) -> float:
    return sum(f.stat().st_size for f in folder.rglob("*.safetensors")) / 2**30


def layout_configs(
    cache: Path, quick: bool, include: tuple[str, ...] = ("text2image", "image2video")
) -> list[tuple[str, str, list[str]]]:
    """(label, layout, probe arguments): the preset in memory against its folders, side by side.

    quick: each layout loaded only (no generation), plus its weights copied into anonymous memory.
    Otherwise one 1-step generation per row: SD 2.1 at 512 and 768 px in bfloat16 (preset, full
    files, the fp16 files of a folder that has both) and float32 (preset, the folder with both, which
    reads the full files); SVD-XT in bfloat16, denoise and decode of 25 frames (preset, full, fp16).
    """
    sd_rows: dict[str, list[tuple[str, str]]] = {}
    svd_rows: list[tuple[str, str]] = []
    if "text2image" in include:
        sd = layout_folders(cache, "random:sd21")
        sd_rows = {
            "bfloat16": [
                ("preset", "random:sd21"),
                ("full files", str(sd["full"])),
                ("both: fp16 files", str(sd["both"])),
            ],
            "float32": [("preset", "random:sd21"), ("both: full files", str(sd["both"]))],
        }
    if "image2video" in include:
        svd = layout_folders(cache, "random:svd-xt")
        svd_rows = [
            ("preset", "random:svd-xt"),
            ("full files", str(svd["full"])),
            ("fp16 files", str(svd["fp16"])),
        ]
    configs = []
    if quick:
        for dtype, rows in sd_rows.items():
            for layout, model in rows:
                args = _args("text2image", model, dtype, "--phase", "load", "--anonymous-weights")
                configs.append((f"SD2.1 {dtype}, load", layout, args))
        for layout, model in svd_rows:
            args = _args("image2video", model, "bfloat16", "--phase", "load", "--anonymous-weights")
            configs.append(("SVD-XT bfloat16, load", layout, args))
        return configs
    for size in ("512", "768"):
        for dtype, rows in sd_rows.items():
            for layout, model in rows:
                args = _args("text2image", model, dtype, "--size", size, "--steps", "1")
                configs.append((f"SD2.1 {size} px {dtype}", layout, args))
    for phase in ("denoise", "decode"):
        for layout, model in svd_rows:
            args = _args("image2video", model, "bfloat16", "--steps", "1", "--frames", "25", "--phase", phase)
            configs.append((f"SVD-XT 25 frames {phase}", layout, args))
    return configs


def _args(task: str, model: str, dtype: str, *more: str) -> list[str]:
    return ["--task", task, "--model", model, "--dtype", dtype, *more]


def _layout_row(label: str, layout: str, result: dict[str, Any]) -> dict[str, Any]:
    keys = (
        "dtype", "weights_mib", "load_s", "peak_load_mib", "peak_load_anon_mib", "peak_load_file_mib",
        "rss_settled_mib", "rss_settled_anon_mib", "rss_settled_file_mib",
        "rss_anonymous_weights_mib", "rss_anonymous_weights_anon_mib", "rss_anonymous_weights_file_mib",
        "peak_denoise_mib", "peak_decode_mib", "peak_inference_file_mib",
    )  # fmt: skip
    return {
        "label": label,
        "layout": layout,
        **{k: result.get(k) for k in keys},
        "error": result.get("error"),
        "raw": result,
    }


def run_layouts(
    *,
    quick: bool,
    cache: Path,
    include: tuple[str, ...] = ("text2image", "image2video"),
    keep: bool = False,
    log: Any = print,
) -> dict[str, Any]:
    """Preset vs folders, side by side in one run; the folders are removed after unless `keep`."""
    configs = layout_configs(cache, quick, include)
    sizes = {
        f"{folder.parent.name} {folder.name}": weights_gib(folder)
        for folder in sorted((cache / "layouts").glob("*/f*"))
    }
    rows = []
    for label, layout, args in configs:
        log(f"memory layouts: {label}, {layout}")
        rows.append(_layout_row(label, layout, probe(*args)))
    if not keep:
        shutil.rmtree(cache / "layouts", ignore_errors=True)
    return {"rows": rows, "files_gib": sizes}


def main(argv: list[str] | None = None) -> int:
    """`python -m benchmarks.memory [--quick] [--only text2image|image2video] [--keep] [--cache DIR]`:
    the layouts comparison alone, printed with its machine; the memory section of the suite runs it
    after the preset rows."""
    import argparse

    from . import report
    from .__main__ import machine

    p = argparse.ArgumentParser(prog="python -m benchmarks.memory", description=main.__doc__)
    p.add_argument("--quick", action="store_true", help="load only (no generation), about 10 min")
    p.add_argument(
        "--only", nargs="+", choices=("text2image", "image2video"), default=["text2image", "image2video"]
    )
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "opea-media-bench")
    p.add_argument("--keep", action="store_true", help="keep the saved folders (about 21 GB) for a next run")
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args(argv)
    report.print_machine(machine())
    log = lambda text: print(f"  {text}", flush=True)  # noqa: E731
    layouts = run_layouts(
        quick=args.quick, cache=args.cache, include=tuple(args.only), keep=args.keep, log=log
    )
    if args.json:
        args.json.write_text(json.dumps(layouts, indent=1, default=str) + "\n")
    title, header, rows = report.tables("memory", {"figures": {"rows": [], "layouts": layouts}})[1]
    print("\n".join([title, "| " + " | ".join(header) + " |", *("| " + " | ".join(r) + " |" for r in rows)]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
