"""What a first run downloads, per default model and precision, by diffusers' own file selection:
`python -m benchmarks.downloads [--local] [--out FILE]`.

The files come from the same path a load takes: `sources.resolve` lists the repo's weight files,
`sources.choose_weights` picks the variant for the run's precision, and `DiffusionPipeline.download`
(what `from_pretrained` calls) selects the files with those options; its final `snapshot_download`
runs as a dry run, which asks the Hub each file's size and fetches nothing. The README's download
column comes from here.

With the Hub in reach it asks the Hub. `--local` (or no Hub) asks a local stand-in instead
(benchmarks/hub.py) that serves the presets saved as the repos lay them out (float32 and
`variant="fp16"` files side by side, benchmarks/memory.py `layout_folders`; 20 GB of disk, kept
under `--cache` for the next run): the same architectures, so the same tensors and file sizes,
but without the other files a real repo may hold (pickles, single-file checkpoints), which the
selection leaves out anyway.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from unittest.mock import patch

from opea_media.config import DEFAULT_MODELS, Task
from opea_media.models import sources

GB = 10**9


def plan(task: Task, repo_id: str, *, half_precision: bool, cache_root: Path) -> list[tuple[str, int]]:
    """(path, bytes) of every file a load of `repo_id` fetches into an empty cache."""
    from diffusers import DiffusionPipeline
    from diffusers.pipelines import pipeline_utils
    from huggingface_hub import snapshot_download

    source = sources.resolve(task, repo_id, cache_root=cache_root)
    options = sources.choose_weights(source.files, half_precision=half_precision).options()
    planned: list[tuple[str, int]] = []

    class Planned(Exception):
        pass

    def dry_run(*args: Any, **kwargs: Any) -> None:
        planned.extend(
            (f.filename, f.file_size or 0) for f in snapshot_download(*args, **kwargs, dry_run=True)
        )
        raise Planned

    with patch.object(pipeline_utils, "snapshot_download", dry_run), contextlib.suppress(Planned):
        DiffusionPipeline.download(repo_id, **options)
    if not planned:  # download() found everything cached and returned before listing
        raise RuntimeError(f"{repo_id} is already cached here; run with an empty HF_HOME")
    return sorted(planned)


def measure(cache_root: Path) -> list[dict[str, Any]]:
    rows = []
    for task, repo_id in DEFAULT_MODELS.items():
        for precision, half in (("16-bit", True), ("float32", False)):
            files = plan(task, repo_id, half_precision=half, cache_root=cache_root)
            weights = [(p, n) for p, n in files if sources.WEIGHT_FILE.search(p)]
            rows.append(
                {
                    "model": repo_id,
                    "precision": precision,
                    "files": len(files),
                    "gb": round(sum(n for _, n in files) / GB, 2),
                    "weights": {p: round(n / GB, 3) for p, n in weights},
                }
            )
    return rows


def _measure_in_child(
    endpoint: str, hf_home: Path, cache_root: Path, more_env: dict[str, str] | None = None
) -> list[dict[str, Any]]:
    # A fresh process: huggingface_hub reads HF_ENDPOINT and HF_HOME once, on import.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_ENDPOINT": endpoint, "HF_HOME": str(hf_home), **(more_env or {})}
    code = "import json, pathlib, sys\nfrom benchmarks.downloads import measure\n"
    code += "print(json.dumps(measure(pathlib.Path(sys.argv[1]))))"
    command = [sys.executable, "-c", code, str(cache_root)]
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        raise RuntimeError(out.stderr.strip().splitlines()[-1] if out.stderr.strip() else "measure failed")
    return json.loads(out.stdout.strip().splitlines()[-1])


def local_rows(cache_root: Path) -> list[dict[str, Any]]:
    from .hub import serve_hub
    from .memory import layout_folders

    preset_of = {task: name for name, task in sources.PRESET_MODELS.items()}
    repos = {
        repo: layout_folders(cache_root, preset_of[task])["both"] for task, repo in DEFAULT_MODELS.items()
    }
    with tempfile.TemporaryDirectory() as hf_home, serve_hub(repos) as hub:
        return _measure_in_child(hub.endpoint, Path(hf_home), cache_root)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.downloads", description=__doc__.splitlines()[0])
    p.add_argument("--local", action="store_true", help="ask the local stand-in even if the Hub is in reach")
    p.add_argument(
        "--cache", type=Path, default=Path.home() / ".cache" / "opea-media-bench", help="for --local"
    )
    p.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    args = p.parse_args(argv)
    cache_root = args.cache.expanduser()

    why = "--local" if args.local else sources.hub_unreachable()
    if why:
        print(f"asking the local stand-in ({why}): the presets saved as the repos lay them out")
        rows = local_rows(cache_root)
    else:
        from huggingface_hub import constants, get_token

        print(f"asking the Hub ({constants.ENDPOINT})")
        # An empty HF_HOME, so nothing counts as cached; the token (the gated SVD-XT) comes along.
        token = {"HF_TOKEN": get_token() or ""}
        with tempfile.TemporaryDirectory() as hf_home:
            rows = _measure_in_child(constants.ENDPOINT, Path(hf_home), cache_root, token)
    for row in rows:
        print(f"{row['model']}, {row['precision']} run: {row['gb']} GB in {row['files']} files")
        for path, gb in row["weights"].items():
            print(f"    {path}: {gb} GB")
    if args.out:
        args.out.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
