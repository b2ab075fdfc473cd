"""The benchmark suite: `python -m benchmarks [--quick] [--device cuda] [--only SECTION ...] [--out FOLDER]`.

Prints one table per section and writes results.json and results.md into the output folder.
Sections: shapes, startup, overhead, jobs, concurrency, encoding, levers, backends, memory (in this
order; memory last because its SVD-XT-size runs take longest). `--device cuda` runs the GPU
variant (float16, full sizes and step counts, sized for minutes on an H100-class GPU; also
`python -m benchmarks.gpu`).
docs/performance.md explains every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SECTIONS = (
    "shapes", "startup", "overhead", "jobs", "concurrency", "encoding", "levers", "backends", "memory",
)  # fmt: skip


def usable_cores() -> int:
    """The CPUs this process may run on: its affinity, capped by a cgroup CPU quota (containers)."""
    from opea_media.models.tuning import cpu_quota_threads

    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = os.cpu_count() or 1
    return cpu_quota_threads() or available


def machine() -> dict[str, Any]:
    import diffusers
    import torch
    import transformers

    from opea_media.models.cpu import cpu_info

    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        **cpu_info(),
        "cores": os.cpu_count(),
        "cores_usable": usable_cores(),
        "memory_gib": round(mem_gib, 1),
        # torch's test for its bf16 CPU path: AVX-512 BW/VL/DQ, true on AVX-512 CPUs without
        # AVX512-BF16 too (emulated there); `--dtype auto` goes by the flags instead.
        "cpu_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
    }


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer rounds and smaller memory runs (about 15 min)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    p.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), metavar="SECTION")
    p.add_argument("--out", type=Path, default=None, help="default: benchmarks/results/<date>-cpu[-quick]")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "opea-media-bench")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from . import report

    args = parse(argv)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M")
    out = (
        args.out
        or Path(__file__).parent / "results" / f"{stamp}-{args.device}{'-quick' if args.quick else ''}"
    )
    out.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "started": stamp,
        "quick": args.quick,
        "device": args.device,
        "command": " ".join(["python -m benchmarks", *sys.argv[1:]]),
        "sections": {},
    }
    # Machines differ between runs (and sessions): every report names its own first.
    report.print_machine(results["machine"])

    def save() -> None:
        (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
        (out / "results.md").write_text(report.markdown(results))

    for section in SECTIONS:
        if section not in args.only:
            continue
        report.console.rule(f"{section} (load average {load()[0]})")
        begin, load_before = time.perf_counter(), load()
        figures = run_section(section, args)
        results["sections"][section] = {
            "figures": figures,
            "seconds": time.perf_counter() - begin,
            "load_before": load_before,
            "load_after": load(),
        }
        report.print_section(section, results["sections"][section])
        save()
    report.console.print(f"written: {out / 'results.json'}, {out / 'results.md'}")
    return 0


def run_section(section: str, args: argparse.Namespace) -> Any:
    from . import backends, concurrency, encoding, jobs, levers, memory, overhead, shapes, startup

    quick = args.quick
    log = lambda text: print(f"  {text}", flush=True)  # noqa: E731
    if section == "shapes":  # a CPU model: measured on the CPU whatever --device says
        return shapes.run(rounds=5 if quick else 20, limit=40 if quick else None, log=log)
    if args.device == "cuda":
        return run_cuda_section(section, args, log)
    if section == "startup":
        configs = [
            ("tiny text2image", "text2image", "tiny"),
            ("tiny image2video", "image2video", "tiny"),
            ("random:sd21", "text2image", "random:sd21"),
        ]
        if not quick:
            configs.append(("random:svd-xt", "image2video", "random:svd-xt"))
        return {
            "presets": startup.build_times(
                ("bfloat16",) if quick else ("bfloat16", "float32"), 1 if quick else 3
            ),
            "cli_help": startup.cli_help(5 if quick else 15),
            "serve": startup.serve_to_ready(
                configs, rounds=1 if quick else 3, cache=args.cache, save_presets=True
            ),
        }
    if section == "overhead":
        rows = [overhead.run("tiny", height=64, width=64, steps=20, rounds=10 if quick else 30)]
        log(f"tiny: ratio {rows[0]['ratio']['median']:.3f}")
        rows.append(overhead.run("random:sd21", height=256, width=256, steps=4, rounds=3 if quick else 8))
        return rows
    if section == "jobs":
        return [jobs.run("tiny", rounds=8 if quick else 20)]
    if section == "concurrency":
        levels = (1, 4, 16)
        t2i = concurrency.run(
            service="text2image",
            model="tiny",
            body={"prompt": "a red fox", "num_inference_steps": 20, "height": 64, "width": 64},
            batch_sizes=(1, 4, 16),
            concurrency=levels,
            requests_per_level={1: 16 if quick else 24, 4: 32 if quick else 48, 16: 64 if quick else 96},
        )
        i2v = concurrency.run(
            service="image2video",
            model="tiny",
            body={"num_frames": 4, "num_inference_steps": 2, "height": 64, "width": 64},
            batch_sizes=(1,),
            concurrency=levels,
            requests_per_level={1: 8 if quick else 16, 4: 16 if quick else 32, 16: 32 if quick else 64},
        )
        runs = [t2i, i2v]
        if not quick:
            runs.append(
                concurrency.run(
                    service="text2image",
                    model="random:sd21",
                    body={"prompt": "a red fox", "num_inference_steps": 4, "height": 256, "width": 256},
                    batch_sizes=(1, 4),
                    concurrency=(1, 4),
                    requests_per_level={1: 4, 4: 8},
                )
            )
        return runs
    if section == "encoding":
        return encoding.run(rounds=3 if quick else 7, threads=min(4, os.cpu_count() or 1))
    if section == "levers":
        rounds = 2 if quick else 4
        # One round: each policy costs fresh processes of SD 2.1-size, idle and beside a neighbour.
        return levers.openmp_wait_policy(rounds=1, log=log) + levers.run(rounds=rounds, quick=quick, log=log)
    if section == "backends":
        # 768 px, and eager bfloat16 where it is not the default, only in the full run.
        return backends.run(
            sizes=(512,) if quick else (512, 768),
            steps=4,
            rounds=2 if quick else 3,
            bf16=not quick,
            cache=args.cache,
            log=log,
        )
    if section == "memory":
        figures = memory.run(quick=quick, log=log)
        figures["layouts"] = memory.run_layouts(quick=quick, cache=args.cache, log=log)
        return figures
    raise ValueError(section)


def run_cuda_section(section: str, args: argparse.Namespace, log: Any) -> Any:
    """The figures on CUDA in float16: SD 2.1 at 768 px / 25 steps, SVD-XT at 25 frames / 25 steps."""
    from . import backends, concurrency, encoding, jobs, levers, memory, overhead, startup

    sd21_768 = {"prompt": "a red fox", "num_inference_steps": 25, "height": 768, "width": 768}
    if section == "startup":
        return {
            "presets": startup.build_times(("float16",), 1, device="cuda"),
            "cli_help": startup.cli_help(5),
            "serve": startup.serve_to_ready(
                [
                    ("tiny text2image", "text2image", "tiny"),
                    ("random:sd21", "text2image", "random:sd21"),
                    ("random:svd-xt", "image2video", "random:svd-xt"),
                ],
                rounds=1,
                cache=args.cache,
                save_presets=False,
                dtype="float16",
            ),
        }
    if section == "overhead":
        return [
            overhead.run("tiny", height=64, width=64, steps=20, rounds=10, device="cuda"),
            overhead.run("random:sd21", height=768, width=768, steps=25, rounds=4, device="cuda"),
        ]
    if section == "concurrency":
        return [
            concurrency.run(
                service="text2image",
                model="random:sd21",
                body=sd21_768,
                batch_sizes=(1, 4),
                concurrency=(1, 4, 16),
                requests_per_level={1: 2, 4: 8, 16: 16},
            )
        ]
    if section == "jobs":
        return [jobs.run("tiny", rounds=10)]
    if section == "encoding":
        return encoding.run(rounds=3, threads=4)
    if section == "levers":
        return levers.run_cuda(rounds=2, log=log)
    if section == "backends":
        return backends.run_cuda(rounds=2, log=log)
    if section == "memory":
        return memory.run(quick=False, device="cuda", log=log)
    raise ValueError(section)


if __name__ == "__main__":
    raise SystemExit(main())
