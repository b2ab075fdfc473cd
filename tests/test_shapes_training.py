"""training/train_shapes.py, the script that made the shipped `shapes` model, runs and is deterministic.

A few steps of each stage, twice from one seed: the same bytes both times, and a pipeline that
loads and draws through the same path as `--model shapes`. (The shipped run's figures are in
opea_media/models/shapes/text2image/training.json and docs/shapes.md.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opea_media.models import ModelRegistry
from opea_media.params import Text2ImageParams

REPO = Path(__file__).parents[1]


def train(out: Path) -> None:
    args = ["--vae-steps", "3", "--unet-steps", "3", "--pictures", "64", "--batch", "4", "--out", str(out)]
    done = subprocess.run(
        [sys.executable, "-m", "training.train_shapes", *args], cwd=REPO, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_the_training_script_is_deterministic_and_makes_a_loadable_pipeline(tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    train(first)
    train(second)
    weights = sorted(p.relative_to(first) for p in first.rglob("*.safetensors"))
    assert {p.parts[0] for p in weights} == {"text_encoder", "unet", "vae"}
    # Both tokenizer layouts: tokenizer.json (transformers 5) and vocab.json + merges.txt (4).
    assert {p.name for p in (first / "tokenizer").iterdir()} >= {"tokenizer.json", "vocab.json", "merges.txt"}
    for path in weights:
        assert (first / path).read_bytes() == (second / path).read_bytes(), path
    # Readable by others: the service in the image runs as its own user.
    assert all((p.stat().st_mode & 0o044) == 0o044 for p in first.rglob("*") if p.is_file())
    model = ModelRegistry(device="cpu", cache_dir=tmp_path / "cache").text2image(str(first))
    image = model.generate([Text2ImageParams(prompt="a red circle", seed=0, num_inference_steps=2)])[0][0]
    assert image.size == (64, 64)
