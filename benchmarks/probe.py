"""One configuration, measured in a process of its own: load, generate, report JSON on stdout.

Peak RSS is the kernel's high-water mark (VmHWM). It is reset (/proc/self/clear_refs) after
loading and again after the last denoising step, so one run yields three peaks: loading,
denoising, decoding. A fresh process per configuration keeps one run's allocator state out of
the next one's figure.

    python -m benchmarks.probe --task text2image --model random:sd21 --dtype bfloat16 --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


def memory_mib() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    out = {}
    for key in ("VmRSS", "VmHWM"):
        match = re.search(rf"{key}:\s+(\d+) kB", status)
        out[key] = int(match.group(1)) / 1024 if match else float("nan")
    return out


def reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", choices=("text2image", "image2video"), required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--size", default=None, help="HxW or one side; default: the model's native size")
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--num-images", type=int, default=1)
    p.add_argument("--frames", type=int, default=None)
    p.add_argument("--decode-chunk-size", type=int, default=None)
    p.add_argument("--scheduler", default="default")
    p.add_argument("--repeat", type=int, default=1, help="generations; timings of each are reported")
    p.add_argument("--tuning", default="{}", help="JSON of opea_media.models.tuning.Tuning fields")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--phase",
        choices=("all", "denoise", "decode"),
        default="all",
        help="image2video: denoise only (latents out) or decode only (random latents in), each in "
        "bounded time; 'all' runs the whole pipeline",
    )
    return p.parse_args(argv)


def _size(text: str | None) -> tuple[int | None, int | None]:
    if not text:
        return None, None
    h, _, w = text.partition("x")
    return int(h), int(w or h)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse(argv)
    started = time.perf_counter()
    import torch

    from opea_media.models import ModelRegistry
    from opea_media.models.tuning import Tuning

    tuning = Tuning(**json.loads(args.tuning))
    if args.threads:
        torch.set_num_threads(args.threads)
    registry = ModelRegistry(device=args.device, dtype=args.dtype, tuning=tuning)
    handle = registry.handle(args.task, args.model)
    t0 = time.perf_counter()
    model = handle.load()
    load_s = time.perf_counter() - t0
    after_load = memory_mib()
    result: dict[str, Any] = {
        "task": args.task,
        "model": args.model,
        "device": registry.placement_for(args.task).device,
        "dtype": registry.placement_for(args.task).dtype_name,
        "tuning": registry.tuning_for(args.task).as_dict(),
        "threads": torch.get_num_threads(),
        "import_s": t0 - started,
        "load_s": load_s,
        "rss_after_load_mib": after_load["VmRSS"],
        "peak_load_mib": after_load["VmHWM"],
        "weights_mib": sum(
            p.numel() * p.element_size()
            for m in (getattr(model.pipe, n, None) for n in ("unet", "vae", "text_encoder", "image_encoder"))
            if m is not None
            for p in m.parameters()
        )
        / MIB,
        "runs": [],
    }
    height, width = _size(args.size)
    run = _generate if args.phase == "all" else _video_phase
    for _ in range(args.repeat):
        result["runs"].append(run(model, args, height, width))
    runs = result["runs"]
    result["peak_denoise_mib"] = max(r["peak_denoise_mib"] for r in runs)
    result["peak_decode_mib"] = max(r["peak_decode_mib"] for r in runs)
    result["peak_inference_mib"] = max(
        v
        for v in (result["peak_denoise_mib"], result["peak_decode_mib"])
        if v == v  # not NaN
    )
    result["peak_total_mib"] = max(result["peak_load_mib"], result["peak_inference_mib"])
    if registry.placement_for(args.task).device == "cuda":
        result["cuda_peak_allocated_mib"] = max(
            max(r.get("cuda_peak_denoise_mib", 0), r.get("cuda_peak_decode_mib", 0)) for r in runs
        )
        result["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
    return result


def _generate(model: Any, args: argparse.Namespace, height: int | None, width: int | None) -> dict[str, Any]:
    import torch

    from opea_media.params import Image2VideoParams, Text2ImageParams

    marks: dict[str, float] = {}
    cuda = args.device == "cuda"

    def on_step(step: int, total: int) -> None:
        if step == 1:
            if cuda:
                torch.cuda.synchronize()
            marks["first_step"] = time.perf_counter()
        if step == total:
            if cuda:
                torch.cuda.synchronize()
                marks["cuda_peak_denoise"] = torch.cuda.max_memory_allocated() / MIB
                torch.cuda.reset_peak_memory_stats()
            marks["denoised"] = time.perf_counter()
            marks["peak_denoise"] = memory_mib()["VmHWM"]
            reset_peak()

    reset_peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    params: Any
    if args.task == "text2image":
        params = Text2ImageParams(
            prompt="a photograph of an astronaut riding a horse",
            num_images_per_prompt=args.num_images,
            num_inference_steps=args.steps,
            height=height,
            width=width,
            seed=0,
            scheduler=args.scheduler,
        )
        outputs = model.generate([model.complete(params)], on_step=on_step)[0]
    else:
        from PIL import Image

        clip = model.complete(
            Image2VideoParams(
                num_frames=args.frames,
                num_inference_steps=args.steps,
                decode_chunk_size=args.decode_chunk_size,
                seed=0,
                height=height,
                width=width,
            )
        )
        image = Image.effect_noise((clip.width, clip.height), 64).convert("RGB")
        outputs = model.generate(image, clip, on_step=on_step)
        params = clip
    if cuda:
        torch.cuda.synchronize()
    end = time.perf_counter()
    cuda_peaks = (
        {
            "cuda_peak_denoise_mib": marks["cuda_peak_denoise"],
            "cuda_peak_decode_mib": torch.cuda.max_memory_allocated() / MIB,
        }
        if cuda
        else {}
    )
    return {
        **cuda_peaks,
        "seconds": end - start,
        "denoise_s": marks["denoised"] - start,
        "decode_s": end - marks["denoised"],
        "outputs": len(outputs),
        "size": list(outputs[0].size),
        "peak_denoise_mib": marks["peak_denoise"],
        "peak_decode_mib": memory_mib()["VmHWM"],
        "params": {k: v for k, v in vars(params).items() if k != "prompt"},
    }


def _video_phase(
    model: Any, args: argparse.Namespace, height: int | None, width: int | None
) -> dict[str, Any]:
    """SVD's denoising alone (output_type="latent") or its decoding alone, as the pipeline runs them."""
    import torch
    from PIL import Image

    from opea_media.models.inference import run_pipeline
    from opea_media.params import Image2VideoParams

    p = model.complete(
        Image2VideoParams(
            num_frames=args.frames,
            num_inference_steps=args.steps,
            decode_chunk_size=args.decode_chunk_size,
            seed=0,
            height=height,
            width=width,
        )
    )
    pipe = model.pipe
    cuda = args.device == "cuda"
    reset_peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    if args.phase == "denoise":
        image = Image.effect_noise((p.width, p.height), 64).convert("RGB")
        latents = run_pipeline(
            pipe,
            image=image,
            height=p.height,
            width=p.width,
            num_frames=p.num_frames,
            num_inference_steps=p.num_inference_steps,
            decode_chunk_size=p.decode_chunk_size,
            generator=torch.Generator("cpu").manual_seed(0),
            output_type="latent",
        ).frames
        shape = list(latents.shape)
    else:
        latents = torch.randn(
            1, p.num_frames, 4, p.height // 8, p.width // 8, generator=torch.Generator().manual_seed(0)
        ).to(dtype=pipe.vae.dtype, device=pipe.device)
        with torch.inference_mode():
            frames = pipe.decode_latents(latents, p.num_frames, min(p.decode_chunk_size, p.num_frames))
            frames = pipe.video_processor.postprocess_video(video=frames, output_type="pil")[0]
        shape = [len(frames), *frames[0].size]
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    peak = memory_mib()["VmHWM"]
    cuda_peak = torch.cuda.max_memory_allocated() / MIB if cuda else float("nan")
    return {
        f"cuda_peak_{args.phase}_mib": cuda_peak,
        "phase": args.phase,
        "seconds": seconds,
        "shape": shape,
        "peak_denoise_mib": peak if args.phase == "denoise" else float("nan"),
        "peak_decode_mib": peak if args.phase == "decode" else float("nan"),
        "params": {k: v for k, v in vars(p).items()},
    }


if __name__ == "__main__":
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    json.dump(main(), sys.stdout)
    sys.stdout.write("\n")
