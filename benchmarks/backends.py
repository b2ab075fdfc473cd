"""Backends side by side: eager PyTorch, torch.compile, OpenVINO, OpenVINO int8 (`--only backends`).

One process, one SD 2.1-size pipeline built as the product builds it (`ModelRegistry`, today's
defaults: `--backend torch`, `--dtype auto`), and beside it the same weights run by each other
backend: the candidates share the text encoder and VAE encoder, and torch.compile shares the UNet
itself, so the process holds each big module once per backend. The backends are measured in
groups (torch.compile and OpenVINO; then OpenVINO int8), each beside the default, and a group is
freed before the next: all at once did not fit in 24 GiB. Each round runs one whole request on
every member, in alternating order (A B C C B A ...), with the same prompt and seed; each
step's time comes from the pipeline's step callback. The first request of each candidate is not a
round: it is the candidate's first-request cost, with its conversion or compilation (reported
beside it). Agreement is the decoded image's difference to eager float32's, same seed.

Memory: the peak RSS of the process while a candidate's request runs (its kernel high-water mark,
reset before the request), and what making the candidate added to the resident set.

`python -m benchmarks.backends [--size 512 768] [--steps 4] [--rounds 3] [--bf16]`
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .probe import memory_mib, reset_peak
from .stats import Sample

PROMPT = "a lighthouse on a cliff at dusk, oil painting"
SEED = 11


@dataclass
class Candidate:
    name: str
    model: Any  # a Text2ImageModel
    setup_seconds: float = 0.0  # conversion + compilation, or torch.compile's first call
    setup_note: str = ""
    resident_mib: float = 0.0  # what making it added to the process's RSS
    first_request: float = float("nan")
    request: Sample = field(default_factory=lambda: Sample("request"))
    step: Sample = field(default_factory=lambda: Sample("step"))
    peak_mib: list[float] = field(default_factory=list)
    image: Any = None  # uint8 array of the first request's image


def _clone(pipe: Any, **replace: Any) -> Any:
    """The same pipeline class over the same modules, with some replaced (no weight is copied)."""
    components = {**pipe.components, **replace}
    clone = type(pipe)(**components, requires_safety_checker=False)
    clone.set_progress_bar_config(disable=True)
    return clone


def _vae_sharing_encoder(vae: Any) -> Any:
    """A second AutoencoderKL object over the same encoder (its decoder can then be replaced alone)."""
    twin = copy.copy(vae)
    twin._modules = dict(vae._modules)
    return twin


def _wrap(pipe: Any, name: str, images_per_call: int) -> Any:
    from opea_media.models.text2image import Text2ImageModel

    return Text2ImageModel(pipe, ref=name, images_per_call=images_per_call)


def _params(size: int, steps: int) -> Any:
    from opea_media.params import Text2ImageParams

    return Text2ImageParams(prompt=PROMPT, num_inference_steps=steps, seed=SEED, height=size, width=size)


def _request(candidate: Candidate, params: Any) -> tuple[float, list[float], float, Any]:
    """One request: (seconds, each step's seconds, peak RSS MiB, the image as uint8)."""
    import numpy as np

    marks: list[float] = []
    reset_peak()
    start = time.perf_counter()
    ((image,),) = candidate.model.generate(
        [params], on_step=lambda step, total: marks.append(time.perf_counter())
    )
    seconds = time.perf_counter() - start
    steps = [b - a for a, b in zip([start, *marks[:-1]], marks, strict=True)][
        1:
    ]  # the first holds the encode
    return seconds, steps, memory_mib()["VmHWM"], np.asarray(image)


def agreement(image: Any, reference: Any) -> dict[str, float]:
    """PSNR (dB, inf when equal) and largest absolute difference of two uint8 images."""
    import numpy as np

    diff = image.astype(np.float64) - reference.astype(np.float64)
    mse = float((diff**2).mean())
    return {
        "psnr_db": float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse)),
        "max_abs": float(np.abs(diff).max()),
    }


def _make(name: str, build: Callable[[], tuple[Any, float, str]], log: Any) -> Candidate:
    gc.collect()
    before = memory_mib()["VmRSS"]
    log(f"backends: making {name}")
    model, seconds, note = build()
    gc.collect()
    return Candidate(name, model, seconds, note, memory_mib()["VmRSS"] - before)


def _openvino(
    pipe: Any, cache: Path, key: str, images_per_call: int, *, dtype: str, fresh: bool
) -> tuple[Any, float, str]:
    from opea_media.models import openvino

    if fresh:
        shutil.rmtree(cache / "openvino" / key, ignore_errors=True)
    clone = _clone(pipe, vae=_vae_sharing_encoder(pipe.vae))
    # The default's dtype, as `--backend openvino` converts it (16-bit: IR weights stored as fp16).
    conversion = openvino.use_openvino(clone, cache_dir=cache, key=key, dtype=dtype, threads=None)
    note = (
        f"convert {conversion.convert_seconds:.0f} s + compile {conversion.compile_seconds:.0f} s"
        if not conversion.reused
        else f"cached; compile {conversion.compile_seconds:.0f} s"
    )
    return _wrap(clone, f"openvino {key}", images_per_call), conversion.seconds, note


def _int8_ir(cache: Path, fp32_key: str) -> tuple[str, float]:
    """The fp32 IR with the UNet's weights compressed to int8 by NNCF (asymmetric, per channel)."""
    import nncf
    import openvino as ov

    source = cache / "openvino" / fp32_key
    key = fp32_key + "-int8"
    target = cache / "openvino" / key
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    start = time.perf_counter()
    model = nncf.compress_weights(
        ov.Core().read_model(source / "unet.xml"), mode=nncf.CompressWeightsMode.INT8_ASYM
    )
    ov.save_model(model, target / "unet.xml", compress_to_fp16=False)
    for name in ("vae_decoder.xml", "vae_decoder.bin", "opea-media.json"):
        shutil.copy(source / name, target / name)
    return key, time.perf_counter() - start


def run(
    *,
    model: str = "random:sd21",
    sizes: tuple[int, ...] = (512,),
    steps: int = 4,
    rounds: int = 3,
    bf16: bool = False,
    compile_unet: bool = True,
    int8: bool = True,
    cache: Path,
    log: Any = print,
) -> list[dict[str, Any]]:
    import torch

    from opea_media.models import ModelRegistry, openvino, sources

    logging.getLogger("opea_media").setLevel(logging.WARNING)
    cache.mkdir(parents=True, exist_ok=True)
    registry = ModelRegistry(device="cpu", cache_dir=cache)
    dtype = registry.placement_for("text2image").dtype_name
    default_name = f"eager {dtype} (default)"
    default = _make(default_name, lambda: (registry.text2image(model), 0.0, ""), log)
    pipe, per_call = default.model.pipe, default.model.images_per_call
    candidates = [default]
    if dtype != "float32":  # the reference of agreement is eager float32
        reference = ModelRegistry(device="cpu", dtype="float32", cache_dir=cache)
        candidates.append(_make("eager float32", lambda: (reference.text2image(model), 0.0, ""), log))
    elif bf16:
        other = ModelRegistry(device="cpu", dtype="bfloat16", cache_dir=cache)
        candidates.append(_make("eager bfloat16", lambda: (other.text2image(model), 0.0, ""), log))
    source = sources.resolve("text2image", model, cache_root=cache)  # the registry's own key
    key = openvino.cache_key(
        ref=model, location=source.location, kind=source.kind, dtype=dtype, task="text2image"
    )
    restart = Candidate("openvino, second start", None)

    def compiled() -> tuple[Any, float, str]:
        return _wrap(_clone(pipe, unet=torch.compile(pipe.unet)), "compile", per_call), 0.0, "first request"

    def converted() -> tuple[Any, float, str]:
        made = _openvino(pipe, cache, key, per_call, dtype=dtype, fresh=True)
        again = _make(
            restart.name, lambda: _openvino(pipe, cache, key, per_call, dtype=dtype, fresh=False), log
        )
        restart.setup_seconds, restart.setup_note = again.setup_seconds, again.setup_note
        return made

    def int8_weights() -> tuple[Any, float, str]:
        int8_key, seconds = _int8_ir(cache, key)
        made, setup, note = _openvino(pipe, cache, int8_key, per_call, dtype=dtype, fresh=False)
        return made, seconds + setup, f"compress {seconds:.0f} s + {note}"

    # Each group is measured interleaved with the default, then freed: all backends at once held
    # more than this 24 GiB machine had (18 GiB when the kernel killed the run).
    group: list[tuple[str, Callable[[], tuple[Any, float, str]]]] = [("openvino", converted)]
    if compile_unet:
        group.insert(0, ("torch.compile (UNet, inductor)", compiled))
    groups = [group]
    if int8:
        groups.append([("openvino int8 weights (NNCF)", int8_weights)])
    results = []
    for builders in groups:
        members = candidates + [_make(name, build, log) for name, build in builders]
        for size in sizes:
            params = default.model.complete(_params(size, steps))
            _measure(members, params, rounds, log=lambda text, size=size: log(f"backends: {size} px {text}"))
            results.append(_table(model, size, steps, rounds, members, default, restart))
        del members
        gc.collect()
    return results


def _measure(members: list[Candidate], params: Any, rounds: int, *, log: Any) -> None:
    """A first request of each, then `rounds` rounds in alternating order."""
    for c in members:
        c.request, c.step, c.peak_mib = Sample(c.name), Sample(c.name), []
        log(f"first request, {c.name}")
        c.first_request, _, _, c.image = _request(c, params)
    for r in range(rounds):
        for c in members if r % 2 == 0 else members[::-1]:
            seconds, step_times, peak, _ = _request(c, params)
            c.request.values.append(seconds)
            c.step.values += step_times
            c.peak_mib.append(peak)
        log(f"round {r + 1}/{rounds} done")


def _table(
    model: str,
    size: int,
    steps: int,
    rounds: int,
    candidates: list[Candidate],
    default: Candidate,
    restart: Candidate,
) -> dict[str, Any]:
    reference = next((c for c in candidates if c.name.startswith("eager float32")), default)
    rows = []
    for c in candidates:
        rows.append(
            {
                "backend": c.name,
                "request": c.request.summary(),
                "step": c.step.summary(),
                "ratio": Sample(
                    "ratio",
                    [a / b for a, b in zip(c.request.values, default.request.values, strict=True)],
                    unit="x",
                ).summary(),
                "peak_rss_mib": max(c.peak_mib, default=float("nan")),
                "resident_added_mib": c.resident_mib,
                "setup_seconds": c.setup_seconds,
                "setup_note": c.setup_note,
                "first_request_seconds": c.first_request,
                "agreement": agreement(c.image, reference.image),
            }
        )
    return {
        "task": "text2image",
        "model": model,
        "size": size,
        "steps": steps,
        "rounds": rounds,
        "reference": reference.name,
        "second_start": {"seconds": restart.setup_seconds, "note": restart.setup_note},
        "rows": rows,
    }


def run_cuda(*, rounds: int = 2, log: Any = print) -> list[dict[str, Any]]:
    """GPU, float16: eager against torch.compile, SD 2.1-size 768 px 25 steps and SVD-XT 25 frames x 25 steps."""
    from PIL import Image

    from opea_media.models import ModelRegistry
    from opea_media.params import Image2VideoParams

    registry = ModelRegistry(device="cuda")
    t2i = registry.text2image("random:sd21")
    p = t2i.complete(_params(768, 25))
    results = [
        _eager_vs_compiled(
            t2i.pipe,
            lambda: t2i.generate([p]),
            "text2image",
            "random:sd21 768 px 25 steps float16",
            rounds,
            log,
        )
    ]
    i2v = registry.image2video("random:svd-xt")
    image = Image.new("RGB", (1024, 576), (90, 120, 200))
    vp = Image2VideoParams(num_frames=25, num_inference_steps=25, seed=SEED)
    run = "random:svd-xt 25 frames 576x1024 25 steps float16"
    results.append(
        _eager_vs_compiled(i2v.pipe, lambda: i2v.generate(image, vp), "image2video", run, rounds, log)
    )
    return results


def _eager_vs_compiled(
    pipe: Any, generate: Callable[[], Any], task: str, run: str, rounds: int, log: Any
) -> dict[str, Any]:
    """`generate()` with the pipeline's UNet eager and torch.compile'd, interleaved; the first
    compiled call (the compile) is timed apart."""
    import torch

    from .stats import interleave, ratio

    eager = pipe.unet
    compiled = torch.compile(eager)

    def with_unet(unet: Any) -> Callable[[], Any]:
        def call() -> Any:
            pipe.unet = unet
            out = generate()
            torch.cuda.synchronize()
            return out

        return call

    start = time.perf_counter()
    with_unet(compiled)()
    first = time.perf_counter() - start
    log(f"backends (CUDA): {task} eager vs torch.compile")
    samples = interleave({"eager": with_unet(eager), "torch.compile": with_unet(compiled)}, rounds=rounds)
    pipe.unet = eager
    return {
        "task": task,
        "run": run,
        "samples": {k: v.summary() for k, v in samples.items()},
        "ratio": ratio(samples["torch.compile"], samples["eager"]).summary(),
        "compile_first_request_seconds": first,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.backends", description=__doc__.splitlines()[0])
    p.add_argument("--model", default="random:sd21", help="tiny: a check of this script in seconds")
    p.add_argument("--size", type=int, nargs="+", default=[512])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="add eager bfloat16 (slow without native bf16)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "opea-media-bench")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    figures = run(
        model=args.model,
        sizes=tuple(args.size),
        steps=args.steps,
        rounds=args.rounds,
        bf16=args.bf16,
        compile_unet=not args.no_compile,
        int8=not args.no_int8,
        cache=args.cache,
        log=lambda text: print(f"  {text}", flush=True),
    )
    from . import report

    for title, header, rows in report.tables("backends", {"figures": figures}):
        report.console.print(report.table(title, header, rows))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=1, default=str) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
