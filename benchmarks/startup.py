"""Start-up: `opea-media --help`, and `serve` until /health says ready, against reading the weights.

The limit for a model start is reading its safetensors from disk (page cache warm, as on a
second start). The presets are also saved once in the dtype they are served in, so that
building them in-process can be compared with loading the same pipeline from a folder.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .service import ROOT, ServeProcess, opea_media_command
from .stats import Sample

_READ_WEIGHTS = """
import sys, time
from pathlib import Path
t = time.perf_counter()
from safetensors.torch import load_file
files = sorted(Path(sys.argv[1]).rglob("*.safetensors"))
t0 = time.perf_counter()
# clone(): load_file maps the file lazily; the floor is having every byte in this process's memory.
n = sum(sum(v.clone().numel() * v.element_size() for v in load_file(f).values()) for f in files)
print(time.perf_counter() - t0, n, t0 - t)
"""


def _wall(command: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True, env={**os.environ, **(env or {})})
    return time.perf_counter() - start


def cli_help(rounds: int) -> dict[str, Any]:
    """`opea-media --help` beside the bare interpreter and the model layer's imports, interleaved."""
    script = Path(sys.executable).with_name("opea-media")
    help_cmd = [str(script), "--help"] if script.exists() else [*opea_media_command(), "--help"]
    commands = {
        "opea-media --help": (help_cmd, rounds),
        "python -c pass (interpreter floor)": ([sys.executable, "-c", "pass"], rounds),
        # What any model start pays before reading a byte of weights (seconds each: fewer rounds).
        # The package itself is light; its registry, and the first load, import the libraries.
        "import opea_media.models.registry (torch, diffusers, transformers)": (
            [sys.executable, "-c", "import opea_media.models.registry, transformers"],
            min(rounds, 3),
        ),
    }
    samples = {name: Sample(name) for name in commands}
    for r in range(rounds + 1):
        for name, (command, wanted) in commands.items() if r % 2 else reversed(commands.items()):
            if r > wanted:
                continue
            seconds = _wall(command)
            if r:  # the first round warms the page cache
                samples[name].values.append(seconds)
    return {name: s.summary() for name, s in samples.items()}


_BUILD = """
import sys, time, torch
from opea_media.models.presets import build_preset, parameter_counts
t = time.perf_counter()
build_preset(sys.argv[1], dtype=getattr(torch, sys.argv[2]), device=sys.argv[3])
if sys.argv[3] == "cuda":
    torch.cuda.synchronize()
print(time.perf_counter() - t, sum(parameter_counts(sys.argv[1]).values()))
"""


def build_times(dtypes: tuple[str, ...], rounds: int, device: str = "cpu") -> dict[str, Any]:
    """Seconds to build each preset with random weights (imports excluded), a fresh process each."""
    samples: dict[str, Sample] = {}
    params: dict[str, int] = {}
    for r in range(rounds):
        for name in ("random:sd21", "random:svd-xt"):
            for dtype in dtypes if r % 2 == 0 else dtypes[::-1]:
                out = subprocess.run(
                    [sys.executable, "-W", "ignore", "-c", _BUILD, name, dtype, device],
                    cwd=ROOT,
                    check=True,
                    capture_output=True,
                    text=True,
                )
                seconds, count = out.stdout.split()
                samples.setdefault(f"build {name} {dtype}", Sample(f"{name} {dtype}")).values.append(
                    float(seconds)
                )
                params[name] = int(count)
    return {"samples": {k: s.summary() for k, s in samples.items()}, "parameters": params}


def saved_preset(name: str, folder: Path, dtype: str) -> Path:
    """The preset saved once as a diffusers folder (what a real checkpoint on disk looks like)."""
    target = folder / f"{name.replace(':', '-')}-{dtype}"
    if (target / "model_index.json").is_file():
        return target
    code = (
        "import sys, torch; from opea_media.models.presets import build_preset; "
        "build_preset(sys.argv[1], dtype=getattr(torch, sys.argv[3])).save_pretrained(sys.argv[2])"
    )
    subprocess.run([sys.executable, "-c", code, name, str(target), dtype], cwd=ROOT, check=True)
    return target


def read_weights(folder: Path) -> tuple[float, int]:
    out = subprocess.run(
        [sys.executable, "-c", _READ_WEIGHTS, str(folder)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, nbytes, _ = out.stdout.split()
    return float(seconds), int(nbytes)


def serve_to_ready(
    configs: list[tuple[str, str, str]],
    *,
    rounds: int,
    cache: Path,
    save_presets: bool,
    dtype: str = "bfloat16",
) -> dict[str, Any]:
    """Spawn-to-ready of `serve` per (label, service, model), interleaved over rounds.

    With save_presets, each preset also runs from its saved folder, and the time to merely read
    that folder's safetensors is measured beside it.
    """
    runs: list[tuple[str, str, str]] = list(configs)
    reads: dict[str, Path] = {}
    if save_presets:
        for label, service, model in configs:
            if model.startswith("random:"):
                folder = saved_preset(model, cache / "saved", dtype)
                runs.append((f"{label}, from a saved folder", service, str(folder)))
                reads[f"{label}: read its safetensors"] = folder
    samples = {label: Sample(label) for label, _, _ in runs}
    for label in reads:
        samples[label] = Sample(label)
    sizes: dict[str, int] = {}
    env: dict[str, str | None] = {"OPEA_MEDIA_CACHE": str(cache / "opea-media-cache")}
    for r in range(rounds):
        for label, service, model in runs if r % 2 == 0 else runs[::-1]:
            with ServeProcess(service, model, "--dtype", dtype, env=env) as server:
                samples[label].values.append(server.wait_ready())
        for label, folder in reads.items():
            seconds, nbytes = read_weights(folder)
            samples[label].values.append(seconds)
            sizes[label] = nbytes
    return {
        "samples": {name: s.summary() for name, s in samples.items()},
        "weights_gib": {k: v / 2**30 for k, v in sizes.items()},
        "dtype": dtype,
    }


if __name__ == "__main__":
    print(json.dumps(cli_help(3), indent=1))
