"""The installed `opea-media` console script, run as a user would run it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

from opea_media.media.video import probe_video


def opea_media() -> str:
    script = Path(sys.executable).with_name("opea-media")
    found = str(script) if script.exists() else shutil.which("opea-media")
    assert found, "the opea-media console script is not installed (pip install -e .)"
    return found


def run(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [opea_media(), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def test_generate_then_animate_offline(tmp_path: Path) -> None:
    made = run(
        "generate-image",
        "a watercolour harbour",
        "-o",
        "harbour.png",
        "--model",
        "tiny",
        "--seed",
        "5",
        cwd=tmp_path,
        env={"OPEA_MEDIA_STEPS": "3"},
    )
    assert made.returncode == 0, made.stderr
    assert made.stdout.strip() == "harbour.png (seed 5)"
    with Image.open(tmp_path / "harbour.png") as image:
        assert image.size == (64, 64) and image.text["steps"] == "3"  # type: ignore[attr-defined]

    clip = run(
        "animate",
        "harbour.png",
        "-o",
        "harbour.mp4",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--frames",
        "6",
        cwd=tmp_path,
    )
    assert clip.returncode == 0, clip.stderr
    info = probe_video(tmp_path / "harbour.mp4")
    assert (info.frames, info.width, info.height, round(info.fps)) == (6, 64, 64, 7)


def test_errors_are_one_line_with_a_nonzero_exit(tmp_path: Path) -> None:
    result = run("animate", "nowhere.png", "--model", "tiny", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip() == "Error: nowhere.png: no such file"
    assert list(tmp_path.iterdir()) == []


def test_a_bad_variable_fails_like_the_flag(tmp_path: Path) -> None:
    by_flag = run("generate-image", "a cat", "--model", "tiny", "--threads", "abc", cwd=tmp_path)
    by_variable = run(
        "generate-image", "a cat", "--model", "tiny", cwd=tmp_path, env={"OPEA_MEDIA_THREADS": "abc"}
    )
    assert by_flag.returncode == by_variable.returncode == 2
    assert by_flag.stderr == by_variable.stderr
    assert by_flag.stderr.strip().startswith(
        "Error: Invalid value for '--threads' (env var: 'OPEA_MEDIA_THREADS')"
    )
    assert len(by_flag.stderr.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_python_dash_m_works(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "opea_media", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.startswith("opea-media, version")


def test_verbose_says_which_model_where_in_what_precision_and_how_long(tmp_path: Path) -> None:
    args = (
        "generate-image",
        "a cat",
        "-o",
        "cat.png",
        "--model",
        "tiny",
        "--steps",
        "2",
        "--dtype",
        "float32",
    )
    info = run("-v", *args, cwd=tmp_path)
    assert info.returncode == 0, info.stderr
    reading = next(line for line in info.stderr.splitlines() if "reading the pipeline" in line)
    assert "model=tiny" in reading and "device=cpu" in reading and "dtype=float32" in reading
    assert any("model ready" in line and "seconds=" in line for line in info.stderr.splitlines())
    assert "pipeline call done" not in info.stderr  # per-call timings are for -vv
    debug = run("-vv", *args, cwd=tmp_path)
    assert debug.returncode == 0, debug.stderr
    call = next(line for line in debug.stderr.splitlines() if "pipeline call done" in line)
    assert "steps=2" in call and "size=64x64" in call and "seconds=" in call
    assert run(*args, cwd=tmp_path).stderr == ""  # quiet without -v
