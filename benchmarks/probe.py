"""One configuration, measured in a process of its own: load, generate, report JSON on stdout.

Peak RSS is the kernel's high-water mark (VmHWM). It is reset (/proc/self/clear_refs) after
loading and again after the last denoising step, so one run yields three peaks: loading,
denoising, decoding. A fresh process per configuration keeps one run's allocator state out of
the next one's figure.

RSS is split as the kernel counts it (/proc/self/status): RssFile, pages of files mapped into the
process (a safetensors checkpoint is memory-mapped, and tensors that stay views of it stay
file-backed), and RssAnon, memory of its own. Both count in VmRSS and in a container's memory
limit. A thread samples the split while loading and generating, for the peak of each part.

    python -m benchmarks.probe --task text2image --model random:sd21 --dtype bfloat16 --size 512
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


STATUS_KEYS = ("VmRSS", "VmHWM", "RssAnon", "RssFile")
MODELS = ("unet", "vae", "text_encoder", "image_encoder")  # a pipeline's components that hold weights


def memory_mib() -> dict[str, float]:
    status = Path("/proc/self/status").read_text()
    out = {}
    for key in STATUS_KEYS:
        match = re.search(rf"{key}:\s+(\d+) kB", status)
        out[key] = int(match.group(1)) / 1024 if match else float("nan")
    return out


class SplitPeaks:
    """The largest RssAnon and RssFile seen, sampled every `interval` s by a thread.

    VmHWM is exact but has no split; the sampled peaks may miss a spike shorter than `interval`.
    """

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.anon = self.file = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while True:
            self.take()
            if self._stop.wait(self.interval):
                return

    def take(self) -> None:
        now = memory_mib()
        self.anon = max(self.anon, now["RssAnon"])
        self.file = max(self.file, now["RssFile"])

    def reset(self) -> dict[str, float]:
        """The peaks so far (a last sample included); then start again from the current figures."""
        self.take()
        peaks = {"anon": self.anon, "file": self.file}
        self.anon = self.file = 0.0
        return peaks

    def __enter__(self) -> SplitPeaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def settle(*, trim: bool = False) -> dict[str, float]:
    """RSS once the load's garbage is collected; with `trim`, also once the allocator has handed
    its free pages back (malloc_trim: the service does not, so a generation never starts there)."""
    import contextlib
    import ctypes
    import gc

    gc.collect()
    if trim:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
    time.sleep(0.5)
    return memory_mib()


def copy_weights_to_anonymous(pipe: Any) -> int:
    """Replace every tensor of the pipeline's models by a copy in the process's own memory, so no
    weight stays a view of a memory-mapped file; returns how many were file views before."""
    import torch

    copied = 0
    for name in MODELS:
        model = getattr(pipe, name, None)
        if model is None:
            continue
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for key, tensor in table.items():
                    if tensor is None:
                        continue
                    clone = tensor.detach().clone()
                    if isinstance(tensor, torch.nn.Parameter):
                        clone = torch.nn.Parameter(clone, requires_grad=False)
                    table[key] = clone
                    copied += 1
    return copied


CGROUP = Path("/sys/fs/cgroup")


def cgroup_memory() -> dict[str, float]:
    """The process's cgroup as its memory limit counts it, where one is set (a container): the
    limit, its high-water mark (page cache included), the page cache and anonymous memory now,
    file pages read again after being reclaimed (refaults: the price of a tight limit), and OOM
    kills. cgroup v2 or v1 (Docker 20.10 on cgroupfs); empty outside a limited cgroup."""

    def table(path: Path) -> dict[str, int]:
        return {k: int(v) for k, v in (line.split() for line in path.read_text().splitlines())}

    try:
        if (CGROUP / "memory.max").exists():  # v2
            limit_text = (CGROUP / "memory.max").read_text().strip()
            limit = None if limit_text == "max" else int(limit_text)
            peak_file = CGROUP / "memory.peak"
            peak = int(peak_file.read_text()) if peak_file.exists() else None
            stat, oom_kills = (
                table(CGROUP / "memory.stat"),
                table(CGROUP / "memory.events").get("oom_kill", 0),
            )
            file, anon = stat["file"], stat["anon"]
        else:  # v1
            v1 = CGROUP / "memory"
            limit = int((v1 / "memory.limit_in_bytes").read_text())
            limit = None if limit >= 2**62 else limit
            peak = int((v1 / "memory.max_usage_in_bytes").read_text())
            stat, oom_kills = table(v1 / "memory.stat"), table(v1 / "memory.oom_control").get("oom_kill", 0)
            file, anon = stat["total_cache"], stat["total_rss"]
    except (OSError, ValueError, KeyError):
        return {}
    if limit is None:
        return {}
    return {
        "cgroup_limit_mib": limit / MIB,
        "cgroup_peak_mib": float("nan") if peak is None else peak / MIB,
        "cgroup_file_mib": file / MIB,
        "cgroup_anon_mib": anon / MIB,
        "cgroup_refaulted_file_mib": stat.get(
            "total_workingset_refault_file", stat.get("workingset_refault_file", 0)
        )
        * os.sysconf("SC_PAGE_SIZE")
        / MIB,
        "cgroup_oom_kills": oom_kills,
    }


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
        choices=("all", "denoise", "decode", "load"),
        default="all",
        help="image2video: denoise only (latents out) or decode only (random latents in), each in "
        "bounded time; 'all' runs the whole pipeline; 'load' (either task): load, settle, no generation",
    )
    p.add_argument(
        "--anonymous-weights",
        action="store_true",
        help="after loading, copy every weight into the process's own memory (no file-backed "
        "pages): what a container must hold when the mapped checkpoint pages are dropped",
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
    with SplitPeaks() as split:
        t0 = time.perf_counter()
        model = handle.load()
        load_s = time.perf_counter() - t0
        after_load = memory_mib()
        load_split = split.reset()
        placement = registry.placement_for(args.task)
        result: dict[str, Any] = {
            "task": args.task,
            "model": args.model,
            "device": placement.device,
            "dtype": placement.dtype_name,
            "tuning": registry.tuning_for(args.task).as_dict(),
            "threads": torch.get_num_threads(),
            "import_s": t0 - started,
            "load_s": load_s,
            **_split("rss_after_load", after_load),
            "peak_load_mib": after_load["VmHWM"],
            "peak_load_anon_mib": load_split["anon"],
            "peak_load_file_mib": load_split["file"],
            **_split("rss_settled", settle()),
            "weights_mib": sum(
                p.numel() * p.element_size()
                for m in (getattr(model.pipe, n, None) for n in MODELS)
                if m is not None
                for p in m.parameters()
            )
            / MIB,
            "runs": [],
        }
        if args.anonymous_weights:
            result["weights_copied"] = copy_weights_to_anonymous(model.pipe)
            result.update(_split("rss_anonymous_weights", settle()))
            reset_peak()
        split.reset()
        if args.phase == "load":
            result.update(_split("rss_trimmed", settle(trim=True)))
            return result
        height, width = _size(args.size)
        run = _generate if args.phase == "all" else _video_phase
        for _ in range(args.repeat):
            result["runs"].append(run(model, args, height, width))
        inference_split = split.reset()
    runs = result["runs"]
    result["peak_denoise_mib"] = max(r["peak_denoise_mib"] for r in runs)
    result["peak_decode_mib"] = max(r["peak_decode_mib"] for r in runs)
    result["peak_inference_mib"] = max(
        v
        for v in (result["peak_denoise_mib"], result["peak_decode_mib"])
        if v == v  # not NaN
    )
    result["peak_inference_anon_mib"] = inference_split["anon"]
    result["peak_inference_file_mib"] = inference_split["file"]
    result["peak_total_mib"] = max(result["peak_load_mib"], result["peak_inference_mib"])
    result.update(cgroup_memory())
    if registry.placement_for(args.task).device == "cuda":
        result["cuda_peak_allocated_mib"] = max(
            max(r.get("cuda_peak_denoise_mib", 0), r.get("cuda_peak_decode_mib", 0)) for r in runs
        )
        result["cuda_peak_reserved_mib"] = torch.cuda.max_memory_reserved() / MIB
    return result


def _split(prefix: str, mem: dict[str, float]) -> dict[str, float]:
    """VmRSS and its two parts, as `prefix_mib`, `prefix_anon_mib`, `prefix_file_mib`."""
    return {
        f"{prefix}_mib": mem["VmRSS"],
        f"{prefix}_anon_mib": mem["RssAnon"],
        f"{prefix}_file_mib": mem["RssFile"],
    }


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
