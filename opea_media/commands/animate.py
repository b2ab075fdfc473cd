"""`opea-media animate`: images in, video clips out."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from ..config import Task
from ..models.tuning import Tuning
from ..params import (
    FPS,
    IMAGE2VIDEO_DEFAULT_FPS,
    IMAGE2VIDEO_DEFAULT_MOTION_BUCKET_ID,
    IMAGE2VIDEO_DEFAULT_NOISE_AUG_STRENGTH,
    IMAGE2VIDEO_DEFAULT_STEPS,
    MOTION_BUCKET_ID,
    NOISE_AUG_STRENGTH,
    NUM_FRAMES,
    Image2VideoParams,
    image_seed,
    per_output,
    resolve_seed,
)
from .inputs import read_image_bytes, read_images
from .model_options import ModelChoice, model_options
from .options import EnvCommand, LimitType, generation_options
from .outputs import numbered_paths
from .progress import Reporter
from .remote import RemoteJob, check_flags, image2video_body, run_jobs, server_options

if TYPE_CHECKING:
    from ..media.video import VideoInfo

TASK: Task = "image2video"


@click.command("animate", cls=EnvCommand)
@click.argument("images", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("clip.mp4"),
    help="The clip to write: .mp4 (H.264), .gif or .webp. Several clips are numbered: "
    "clip.mp4 -> clip-1.mp4, clip-2.mp4, ...",
)
@click.option(
    "--frames-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write every frame as a PNG into this folder (<clip name>-001.png, ...).",
)
@click.option(
    "--frames",
    type=LimitType(NUM_FRAMES),
    default=None,
    help="Frames per clip; default: the model's (25 for SVD-XT).",
)
@click.option(
    "--fps",
    type=LimitType(FPS),
    default=IMAGE2VIDEO_DEFAULT_FPS,
    help="Frames per second, of the file and the motion conditioning.",
)
@click.option(
    "--motion-bucket-id",
    type=LimitType(MOTION_BUCKET_ID),
    default=IMAGE2VIDEO_DEFAULT_MOTION_BUCKET_ID,
    help="More motion when higher.",
)
@click.option(
    "--noise-aug-strength",
    type=LimitType(NOISE_AUG_STRENGTH, integer=False),
    default=IMAGE2VIDEO_DEFAULT_NOISE_AUG_STRENGTH,
    help="Noise added to the input image; higher lets the clip stray further from it.",
)
@generation_options(IMAGE2VIDEO_DEFAULT_STEPS)
@server_options(TASK)
@model_options(TASK)
def animate(
    images: tuple[str, ...],
    output: Path,
    frames_dir: Path | None,
    frames: int | None,
    fps: int,
    motion_bucket_id: int,
    noise_aug_strength: float,
    steps: int,
    seed: int | None,
    height: int | None,
    width: int | None,
    quiet: bool,
    server: str | None,
    api_key: str | None,
    model: str,
    device: str,
    dtype: str,
    allow_pickle_weights: bool,
    **levers: Any,
) -> None:
    """Turn each IMAGE (a file path or an http(s) URL) into a short video clip.

    The image is resized to cover the clip size and centre-cropped (576x1024 for SVD by default).
    With --server URL the clips are made by that opea-media service (its jobs API) and written
    here as a local run writes them.
    """
    refused = {"frames_dir": "the service sends the clips, not their frames"} if frames_dir else {}
    check_flags(click.get_current_context(), TASK, server=server, refused=refused)
    params = Image2VideoParams(
        num_frames=frames,
        fps=fps,
        motion_bucket_id=motion_bucket_id,
        noise_aug_strength=noise_aug_strength,
        num_inference_steps=steps,
        seed=seed,
        height=height,
        width=width,
    )
    if server is not None:
        run_remote(
            server=server, api_key=api_key, images=list(images), output=output, params=params, quiet=quiet
        )
        return
    run(
        images=list(images),
        output=output,
        frames_dir=frames_dir,
        params=params,
        model=ModelChoice(model, device, dtype, Tuning(**levers), allow_pickle_weights),
        quiet=quiet,
    )


def run(
    *,
    images: list[str],
    output: Path,
    params: Image2VideoParams,
    model: ModelChoice,
    frames_dir: Path | None = None,
    quiet: bool = False,
) -> list[Path]:
    """Write one clip per input image; returns the clip paths in input order."""
    from ..media.files import prepare_output
    from ..media.video import check_video_path, write_frames, write_video

    check_video_path(output)
    inputs = read_images(images)
    paths = numbered_paths(output, len(inputs))
    prepare_output(output)
    if frames_dir is not None:
        prepare_output(frames_dir / "frame.png")

    reporter = Reporter(quiet=quiet)
    with reporter.status(f"Loading {model.ref}..."):
        i2v = model.registry().image2video(model.ref)
    seeded = dataclasses.replace(params, seed=resolve_seed(params.seed))
    for k, (image, path, clip_params) in enumerate(
        zip(inputs, paths, per_output(i2v.complete(seeded), len(inputs)), strict=True)
    ):
        label = _label(k, len(inputs))
        with reporter.steps(label, params.num_inference_steps) as on_step:
            clip = i2v.generate(image, clip_params, on_step=on_step)
        info = write_video(clip, path, fps=params.fps)
        if frames_dir is not None:
            write_frames(clip, frames_dir, stem=path.stem)
        reporter.info(_summary(path, info, params.fps, clip_params.seed))
    return paths


def run_remote(
    *,
    server: str,
    api_key: str | None,
    images: list[str],
    output: Path,
    params: Image2VideoParams,
    quiet: bool = False,
) -> list[Path]:
    """run() on the service at `server`: one job per input image, each clip in -o's format."""
    from ..media.files import prepare_output
    from ..media.video import check_video_path, probe_video

    check_video_path(output)
    inputs = read_image_bytes(images)  # checked here: a bad image fails before any upload
    paths = numbered_paths(output, len(inputs))
    prepare_output(output)
    seed = resolve_seed(params.seed)
    jobs = [
        RemoteJob(
            label=_label(k, len(inputs)),
            body=image2video_body(dataclasses.replace(params, seed=image_seed(seed, k)), data),
            steps=params.num_inference_steps,
            outputs=1,
        )
        for k, data in enumerate(inputs)
    ]
    reporter = Reporter(quiet=quiet)
    formats = [output.suffix.lower().removeprefix(".")]
    for path, file in run_jobs(
        TASK,
        server=server,
        api_key=api_key,
        jobs=jobs,
        formats=formats,
        paths=paths,
        reporter=reporter,
        phases=True,
    ):
        reporter.info(_summary(path, probe_video(path), params.fps, file["seed"]))
    return paths


def _label(index: int, count: int) -> str:
    return f"clip {index + 1}/{count}" if count > 1 else "animating"


def _summary(path: Path, info: VideoInfo, fps: int, seed: int | None) -> str:
    return f"{path} ({info.frames} frames, {info.width}x{info.height}, {fps} fps, seed {seed})"
