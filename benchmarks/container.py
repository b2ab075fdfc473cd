"""Peak memory inside a container under its memory limit, as the kernel charges it to the container:
`python -m benchmarks.container --image opea-media [--limit 8g --limit 6g] [--preset random:sd21]
[--dtype float32] [-- PROBE ARGUMENTS]`.

One generation (benchmarks/probe.py, 1 step; by default SD 2.1 at 768 px, or what the probe
arguments after `--` say, such as `--frames 25 --phase denoise` for SVD-XT) from the preset saved
as its Hub repo lays it out (benchmarks/memory.py `layout_folders`: float32 and fp16 files side by
side, of which the dtype picks one), run in the
image with `docker run --memory LIMIT --memory-swap LIMIT` (no swap), the folder mounted read-only,
once per limit. The page cache is dropped before each run (as root), so the weights are read from
disk and their pages charged to the container, as on a fresh node. Prints per limit: whether the
run finished or was OOM-killed, the process's peaks, the container's high-water mark (page cache
included), and how much of the weight files the kernel had to read again after reclaiming them.
Build the image first: `docker build -t opea-media .` (Dockerfile).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

from opea_media.models.sources import PRESET_MODELS

from .memory import layout_folders
from .service import ROOT

GIB = 1024.0


def drop_page_cache() -> bool:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
        return True
    except OSError:
        return False


def run(image: str, limit: str, folder: Path, probe_args: list[str]) -> dict[str, Any]:
    dropped = drop_page_cache()
    command = [
        "docker", "run", "--rm", "--network", "none",
        "--memory", limit, "--memory-swap", limit,
        "--user", f"{os.getuid()}:{os.getgid()}",  # the saved folder's owner: its files may be 0600
        "-v", f"{ROOT / 'benchmarks'}:/opt/bench/benchmarks:ro",
        "-v", f"{folder}:/model:ro",
        "-w", "/opt/bench", "-e", "HF_HUB_OFFLINE=1",
        "--entrypoint", "python", image,
        "-W", "ignore", "-m", "benchmarks.probe", "--model", "/model", *probe_args,
    ]  # fmt: skip
    started = time.monotonic()
    out = subprocess.run(command, capture_output=True, text=True, check=False)
    result: dict[str, Any] = {
        "limit": limit,
        "page_cache_dropped": dropped,
        "wall_s": time.monotonic() - started,
    }
    result["exit"] = out.returncode
    if out.returncode == 0:
        result.update(json.loads(out.stdout.strip().splitlines()[-1]))
    else:
        result["outcome"] = "OOM-killed" if out.returncode == 137 else "failed"
        result["stderr"] = out.stderr[-1500:]
    return result


HEADER = (
    "limit",
    "outcome",
    "process peak RSS",
    "container peak (page cache too)",
    "weight pages re-read",
    "OOM kills",
)


def row(result: dict[str, Any]) -> list[str]:
    if result["exit"]:
        return [
            result["limit"],
            f"{result['outcome']} (exit {result['exit']}) after {result['wall_s']:.0f} s",
        ]
    run = result["runs"][0]  # a whole generation times its phases; a video phase alone, itself
    phases = ", ".join(f"{k[:-2]} {v:.0f} s" for k, v in run.items() if k.endswith("_s"))
    phases = phases or f"{run['phase']} {run['seconds']:.0f} s"
    peak = max(result["peak_load_mib"], result["peak_inference_mib"]) / GIB
    anon, file = result["peak_inference_anon_mib"] / GIB, result["peak_inference_file_mib"] / GIB
    return [
        result["limit"],
        f"finished in {result['wall_s']:.0f} s ({phases})",
        f"{peak:.2f} GiB (anon {anon:.2f}, file {file:.2f})",
        f"{result.get('cgroup_peak_mib', float('nan')) / GIB:.2f} GiB",
        f"{result.get('cgroup_refaulted_file_mib', 0) / GIB:.2f} GiB",
        str(result.get("cgroup_oom_kills", 0)),
    ]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.container", description=__doc__.splitlines()[0])
    p.add_argument("--image", default="opea-media")
    p.add_argument("--limit", action="append", default=None, help="docker --memory values (8g, 6g)")
    p.add_argument("--preset", choices=sorted(PRESET_MODELS), default="random:sd21")
    p.add_argument("--dtype", default="float32")
    p.add_argument("probe", nargs="*", help="more probe arguments (after --); default for SD 2.1: --size 768")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "opea-media-bench")
    p.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = p.parse_args(argv)
    folder = layout_folders(args.cache.expanduser(), args.preset)["both"]
    task = PRESET_MODELS[args.preset]
    more = args.probe or (["--size", "768"] if task == "text2image" else [])
    probe_args = ["--task", task, "--dtype", args.dtype, "--steps", "1", *more]
    print(f"{args.preset} {args.dtype}, 1 step, {' '.join(more)}, from {folder} in {args.image}")
    print("| " + " | ".join(HEADER) + " |\n|" + " --- |" * len(HEADER))
    results = []
    for limit in args.limit or ["8g", "6g"]:
        results.append(run(args.image, limit, folder, probe_args))
        cells = row(results[-1])
        print("| " + " | ".join(cells + [""] * (len(HEADER) - len(cells))) + " |", flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
