"""Backends side by side: eager PyTorch, torch.compile, OpenVINO, OpenVINO int8 (`--only backends`).

One process, one pipeline built as the product builds it (`ModelRegistry`, today's defaults:
`--backend torch`, `--dtype auto`): text2image SD 2.1-size (`random:sd21`) at each `--size`, or
image2video SVD-XT-size (`random:svd-xt`, `--task image2video`) at its native 576x1024 with
`--frames` frames. Beside it the same weights run by each other backend: OpenVINO is loaded
as `--backend openvino` loads it (the registry converts into the cache, then sets the levers);
int8 shares the default's encoders, and torch.compile the default's UNet itself. The backends
are measured in two groups (the torch ones, then the OpenVINO ones), each beside the default,
and a group is freed before the next: all at once did not fit in 24 GiB. Each round runs one
whole request on every member, in alternating order (A B C C B A ...), with the same prompt (or
picture) and seed; the pipeline's step callback splits it into steps (the first, which holds
the encode, left out) and the decode (after the last step). The first request of each candidate
is not a round: it is the candidate's first-request cost, with its conversion or compilation
(reported beside it). Agreement is the decoded image's (or clip's) difference to eager
float32's, same seed.

Memory: the peak RSS of the process while a candidate's request runs (its kernel high-water mark,
reset before the request), and what making the candidate added to the resident set.

`python -m benchmarks.backends [--size 512 768] [--steps 4] [--rounds 3] [--bf16]`
`python -m benchmarks.backends --task image2video [--frames 2] [--steps 2] --no-compile`

image2video in one process needs more memory than a 24 GiB machine has: OpenVINO's SVD-XT alone
peaks at 16 GiB for 2 frames, and the run beside the default was OOM-killed; there, compare the
backends in processes of their own with `benchmarks.probe` (docs/performance.md, section 6). And
torch.compile of SVD-XT's UNet did not finish its first 2-frame request in 11 minutes (eager: 3),
hence `--no-compile`.
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
REFERENCE = "eager float32"  # what agreement is measured against


@dataclass
class Candidate:
    name: str
    model: Any  # a Text2ImageModel or Image2VideoModel
    setup_seconds: float = 0.0  # conversion + compilation, or torch.compile's first call
    setup_note: str = ""
    resident_mib: float = 0.0  # what making it added to the process's RSS
    first_request: float = float("nan")
    request: Sample = field(default_factory=lambda: Sample("request"))
    step: Sample = field(default_factory=lambda: Sample("step"))
    decode: Sample = field(default_factory=lambda: Sample("decode"))
    peak_mib: list[float] = field(default_factory=list)
    image: Any = None  # uint8 array of the first request's image (or frames)
    timed: bool = True  # False: only its first request runs (the reference of agreement)


@dataclass(frozen=True)
class Job:
    """What one task's request is: how to run it on a model and how to name it in the table."""

    label: str  # the run, for the table's title
    generate: Callable[[Any, Callable[[int, int], None]], Any]  # (model, on_step) -> uint8 array
    wrap: Callable[[Any, str], Any]  # (pipeline, name) -> a model of the task over it


def _clone(pipe: Any, **replace: Any) -> Any:
    """The same pipeline class over the same modules, with some replaced (no weight is copied)."""
    components = {**pipe.components, **replace}
    extra = {"requires_safety_checker": False} if "safety_checker" in components else {}
    clone = type(pipe)(**components, **extra)
    clone.set_progress_bar_config(disable=True)
    return clone


def _vae_sharing_encoder(vae: Any) -> Any:
    """A second AutoencoderKL object over the same encoder (its decoder can then be replaced alone)."""
    twin = copy.copy(vae)
    twin._modules = dict(vae._modules)
    return twin


def _text2image_job(model: Any, size: int, steps: int) -> Job:
    import numpy as np

    from opea_media.models.text2image import Text2ImageModel
    from opea_media.params import Text2ImageParams

    params = model.complete(
        Text2ImageParams(prompt=PROMPT, num_inference_steps=steps, seed=SEED, height=size, width=size)
    )
    per_call = model.images_per_call

    def generate(m: Any, on_step: Callable[[int, int], None]) -> Any:
        ((image,),) = m.generate([params], on_step=on_step)
        return np.asarray(image)

    return Job(
        f"{size} px, {steps} steps",
        generate,
        lambda pipe, name: Text2ImageModel(pipe, ref=name, images_per_call=per_call),
    )


def _image2video_job(model: Any, frames: int, steps: int) -> Job:
    import numpy as np
    from PIL import Image

    from opea_media.models.image2video import Image2VideoModel
    from opea_media.params import Image2VideoParams

    params = model.complete(Image2VideoParams(num_frames=frames, num_inference_steps=steps, seed=SEED))
    assert params.height and params.width
    image = Image.effect_noise((params.width, params.height), 64).convert("RGB")  # as benchmarks.probe
    chunk = model.decode_chunk_size

    def generate(m: Any, on_step: Callable[[int, int], None]) -> Any:
        return np.stack([np.asarray(f) for f in m.generate(image, params, on_step=on_step)])

    return Job(
        f"{frames} frames {params.width}x{params.height}, {steps} steps, decode_chunk_size {chunk}",
        generate,
        lambda pipe, name: Image2VideoModel(pipe, ref=name, decode_chunk_size=chunk),
    )


def _request(candidate: Candidate, job: Job) -> tuple[float, list[float], float, float, Any]:
    """One request: (seconds, each step's seconds, the decode's seconds, peak RSS MiB, the output)."""
    marks: list[float] = []
    reset_peak()
    start = time.perf_counter()
    out = job.generate(candidate.model, lambda step, total: marks.append(time.perf_counter()))
    end = time.perf_counter()
    # The first step's time holds the prompt's (or image's) encode; after the last: the decode.
    steps = [b - a for a, b in zip(marks, marks[1:], strict=False)]
    return end - start, steps, end - marks[-1], memory_mib()["VmHWM"], out


def agreement(image: Any, reference: Any) -> dict[str, float]:
    """PSNR (dB, inf when equal) and largest absolute difference of two uint8 images (or clips)."""
    import numpy as np

    diff = image.astype(np.float64) - reference.astype(np.float64)
    mse = float((diff**2).mean())
    return {
        "psnr_db": float("inf") if mse == 0 else 10 * float(np.log10(255.0**2 / mse)),
        "max_abs": float(np.abs(diff).max()),
    }


def _make(
    name: str, build: Callable[[], tuple[Any, float, str]], log: Any, *, timed: bool = True
) -> Candidate:
    gc.collect()
    before = memory_mib()["VmRSS"]
    log(f"backends: making {name}")
    model, seconds, note = build()
    gc.collect()
    return Candidate(name, model, seconds, note, memory_mib()["VmRSS"] - before, timed=timed)


def _int8(
    pipe: Any, wrap: Callable[[Any, str], Any], cache: Path, key: str, *, dtype: str, tuning: Any
) -> tuple[Any, str]:
    """`pipe`'s UNet and decoder from the IR `key` (the product's, weights compressed), the
    product's levers set after, as the registry sets them; the encoders are `pipe`'s own."""
    from opea_media.models import openvino
    from opea_media.models.pipeline_tuning import apply_tuning

    clone = _clone(pipe, vae=_vae_sharing_encoder(pipe.vae))
    conversion = openvino.use_openvino(clone, cache_dir=cache, key=key, dtype=dtype, threads=None)
    apply_tuning(clone, tuning)
    return wrap(clone, f"openvino {key}"), f"compile {conversion.compile_seconds:.0f} s"


def _int8_ir(cache: Path, source_key: str) -> tuple[str, float]:
    """The IR with the UNet's weights compressed to int8 by NNCF (asymmetric, per channel)."""
    import nncf
    import openvino as ov

    source = cache / "openvino" / source_key
    key = source_key + "-int8"
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
    task: str = "text2image",
    model: str | None = None,
    sizes: tuple[int, ...] = (512,),
    frames: int = 2,
    steps: int = 4,
    rounds: int = 3,
    bf16: bool = False,
    compile_unet: bool = True,
    int8: bool = True,
    cache: Path,
    log: Any = print,
) -> list[dict[str, Any]]:
    """Each backend beside the default, per size (text2image) or at `frames` frames (image2video).

    Two groups, each interleaved with the default and freed before the next (all at once did not
    fit in 24 GiB; 18 GiB when the kernel killed the run): the torch ones (eager float32, the
    reference of agreement; eager bfloat16 with `bf16` where float32 is the default;
    torch.compile), then the OpenVINO ones (as converted by `--backend openvino`; its int8
    weights).
    """
    import torch

    from opea_media.models import ModelRegistry, openvino, sources
    from opea_media.models.tuning import Tuning

    model = model or ("random:sd21" if task == "text2image" else "random:svd-xt")
    logging.getLogger("opea_media").setLevel(logging.WARNING)
    cache.mkdir(parents=True, exist_ok=True)

    def load(registry: ModelRegistry) -> Any:
        return registry.text2image(model) if task == "text2image" else registry.image2video(model)

    registry = ModelRegistry(device="cpu", cache_dir=cache)
    dtype = registry.placement_for(task).dtype_name  # type: ignore[arg-type]
    default = _make(f"eager {dtype} (default)", lambda: (load(registry), 0.0, ""), log)
    pipe = default.model.pipe
    jobs = (
        [_text2image_job(default.model, size, steps) for size in sizes]
        if task == "text2image"
        else [_image2video_job(default.model, frames, steps)]
    )
    source = sources.resolve(task, model, cache_root=cache)  # type: ignore[arg-type]
    key = openvino.cache_key(ref=model, location=source.location, kind=source.kind, dtype=dtype, task=task)
    wrap = jobs[0].wrap  # the same for every job of the task
    restart = Candidate("openvino, second start", None)

    def other(name: str) -> Callable[[], tuple[Any, float, str]]:
        return lambda: (load(ModelRegistry(device="cpu", dtype=name, cache_dir=cache)), 0.0, "")

    def compiled() -> tuple[Any, float, str]:
        return wrap(_clone(pipe, unet=torch.compile(pipe.unet)), "compile"), 0.0, "first request"

    def converted() -> tuple[Any, float, str]:
        # As `--backend openvino` makes it: loaded, converted into the cache, levers set after.
        shutil.rmtree(cache / "openvino" / key, ignore_errors=True)
        product = ModelRegistry(device="cpu", tuning=Tuning(backend="openvino"), cache_dir=cache)
        made = load(product)
        again = _make(restart.name, second_start, log)
        restart.setup_seconds, restart.setup_note = again.setup_seconds, again.setup_note
        return made, made.convert_seconds, f"convert + compile {made.convert_seconds:.0f} s"

    def second_start() -> tuple[Any, float, str]:
        started = time.perf_counter()
        load(ModelRegistry(device="cpu", tuning=Tuning(backend="openvino"), cache_dir=cache))
        seconds = time.perf_counter() - started  # the load, reading the IR instead of converting
        return None, seconds, f"load {seconds:.0f} s, reusing the conversion"

    def int8_weights() -> tuple[Any, float, str]:
        int8_key, seconds = _int8_ir(cache, key)
        started = time.perf_counter()
        made, note = _int8(pipe, wrap, cache, int8_key, dtype=dtype, tuning=registry.tuning_for(task))
        return made, seconds + time.perf_counter() - started, f"compress {seconds:.0f} s + {note}"

    torch_group: list[tuple[str, Callable[[], tuple[Any, float, str]]]] = []
    if dtype != "float32":
        torch_group.append((REFERENCE, other("float32")))
    elif bf16:
        torch_group.append(("eager bfloat16", other("bfloat16")))
    if compile_unet:
        torch_group.append(("torch.compile (UNet, inductor)", compiled))
    openvino_group = [("openvino", converted)]
    if int8:
        openvino_group.append(("openvino int8 weights (NNCF)", int8_weights))
    tables: dict[str, dict[str, Any]] = {}
    references: dict[str, Any] = {}  # job -> the reference's output, from the first group
    for builders in (torch_group, openvino_group):
        # A clip in float32 takes about twice the default's: for image2video it runs once, for
        # agreement, and is not timed in the rounds.
        members = [default] + [
            _make(name, build, log, timed=task == "text2image" or name != REFERENCE)
            for name, build in builders
        ]
        for job in jobs:
            _measure(members, job, rounds, log=lambda text, job=job: log(f"backends: {job.label}: {text}"))
            ref = next((c for c in members if c.name == REFERENCE), None)
            references.setdefault(job.label, (ref or default).image)
            figures = tables.setdefault(
                job.label,
                {
                    "task": task,
                    "model": model,
                    "run": job.label,
                    "rounds": rounds,
                    "reference": (ref or default).name,
                    "rows": [],
                },
            )
            figures["rows"] += _rows(members, default, references[job.label], group=bool(figures["rows"]))
        del members
        gc.collect()
    for figures in tables.values():
        figures["second_start"] = {"seconds": restart.setup_seconds, "note": restart.setup_note}
    return list(tables.values())


def _measure(members: list[Candidate], job: Job, rounds: int, *, log: Any) -> None:
    """A first request of each, then `rounds` rounds in alternating order."""
    for c in members:
        c.request, c.step, c.decode, c.peak_mib = Sample(c.name), Sample(c.name), Sample(c.name), []
        log(f"first request, {c.name}")
        c.first_request, _, _, _, c.image = _request(c, job)
    timed = [c for c in members if c.timed]
    for r in range(rounds):
        for c in timed if r % 2 == 0 else timed[::-1]:
            seconds, step_times, decode, peak, _ = _request(c, job)
            c.request.values.append(seconds)
            c.step.values += step_times
            c.decode.values.append(decode)
            c.peak_mib.append(peak)
        log(f"round {r + 1}/{rounds} done")


def _rows(
    members: list[Candidate], default: Candidate, reference: Any, *, group: bool
) -> list[dict[str, Any]]:
    def ratio(a: Sample, b: Sample) -> dict[str, Any]:
        return Sample("ratio", [x / y for x, y in zip(a.values, b.values, strict=True)], unit="x").summary()

    rows = []
    for c in members:
        if not c.timed:
            rows.append(
                {
                    "backend": f"{c.name} (reference, first request only)",
                    "first_request_seconds": c.first_request,
                    "resident_added_mib": c.resident_mib,
                    "agreement": agreement(c.image, reference),
                }
            )
            continue
        rows.append(
            {
                "backend": c.name if not (group and c is default) else f"group 2: {c.name}",
                "request": c.request.summary(),
                "step": c.step.summary(),
                "decode": c.decode.summary(),
                "ratio": ratio(c.request, default.request),
                "step_ratio": ratio(c.step, default.step),
                "decode_ratio": ratio(c.decode, default.decode),
                "peak_rss_mib": max(c.peak_mib, default=float("nan")),
                "resident_added_mib": c.resident_mib,
                "setup_seconds": c.setup_seconds,
                "setup_note": c.setup_note,
                "first_request_seconds": c.first_request,
                "agreement": agreement(c.image, reference),
            }
        )
    return rows


def run_cuda(*, rounds: int = 2, log: Any = print) -> list[dict[str, Any]]:
    """GPU, float16: eager against torch.compile, SD 2.1-size 768 px 25 steps and SVD-XT 25 frames x 25 steps."""
    from PIL import Image

    from opea_media.models import ModelRegistry
    from opea_media.params import Image2VideoParams, Text2ImageParams

    registry = ModelRegistry(device="cuda")
    t2i = registry.text2image("random:sd21")
    p = t2i.complete(
        Text2ImageParams(prompt=PROMPT, num_inference_steps=25, seed=SEED, height=768, width=768)
    )
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
    p.add_argument("--task", choices=["text2image", "image2video"], default="text2image")
    p.add_argument("--model", help="random:sd21 / random:svd-xt; tiny: a check of this script in seconds")
    p.add_argument("--size", type=int, nargs="+", default=[512], help="text2image")
    p.add_argument("--frames", type=int, default=2, help="image2video, at the model's native size")
    p.add_argument("--steps", type=int, default=None, help="default: 4 (text2image), 2 (image2video)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--bf16", action="store_true", help="add eager bfloat16 (slow without native bf16)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-int8", action="store_true")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "opea-media-bench")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = p.parse_args(argv)
    figures = run(
        task=args.task,
        model=args.model,
        sizes=tuple(args.size),
        frames=args.frames,
        steps=args.steps or (4 if args.task == "text2image" else 2),
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
