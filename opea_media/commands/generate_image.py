"""`opea-media generate-image`: prompts in, PNG files out."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click

from ..config import Task
from ..errors import InvalidInput
from ..models.tuning import Tuning
from ..params import (
    GUIDANCE_SCALE,
    NUM_IMAGES,
    SCHEDULERS,
    STRENGTH,
    TEXT2IMAGE_DEFAULT_GUIDANCE,
    TEXT2IMAGE_DEFAULT_SCHEDULER,
    TEXT2IMAGE_DEFAULT_STEPS,
    TEXT2IMAGE_DEFAULT_STRENGTH,
    Text2ImageParams,
    image_seed,
    per_output,
    resolve_seed,
)
from .inputs import read_images
from .model_options import ModelChoice, model_options
from .options import EnvCommand, LimitType, generation_options, given
from .outputs import numbered_paths
from .progress import Reporter
from .remote import RemoteJob, check_flags, run_jobs, server_options, text2image_body

if TYPE_CHECKING:
    from PIL import Image

TASK: Task = "text2image"


@click.command("generate-image", cls=EnvCommand)
@click.argument("prompt", required=False)
@click.option(
    "--prompts-file",
    type=click.File("r", encoding="utf-8"),
    help="Read prompts from FILE ('-' for stdin), one per line; blank lines and # comments are skipped.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("image.png"),
    help="The PNG to write. Several images are numbered: image.png -> image-1.png, image-2.png, ...",
)
@click.option("-n", "--num-images", type=LimitType(NUM_IMAGES), default=1, help="Images per prompt.")
@click.option(
    "--guidance-scale",
    type=LimitType(GUIDANCE_SCALE, integer=False),
    default=TEXT2IMAGE_DEFAULT_GUIDANCE,
    help="How strongly to follow the prompt (classifier-free guidance).",
)
@click.option("--negative-prompt", default=None, help="What the image should not show.")
@click.option(
    "--scheduler",
    type=click.Choice(SCHEDULERS),
    default=TEXT2IMAGE_DEFAULT_SCHEDULER,
    help="The sampler; 'default' is the one the model ships with.",
)
@click.option(
    "--init-image",
    default=None,
    metavar="PATH|URL",
    help="Start from this image instead of noise (image-to-image); it is fitted to the output size.",
)
@click.option(
    "--strength",
    type=LimitType(STRENGTH, integer=False),
    default=None,
    help="With --init-image: how far to move from it, 0 (least change) to 1 (ignore it); it "
    f"denoises int(steps x strength) steps, at least one. Default {TEXT2IMAGE_DEFAULT_STRENGTH}.",
)
@click.option(
    "--mask",
    default=None,
    metavar="PATH|URL",
    help="With --init-image: inpaint; white areas of the mask are repainted, black ones kept.",
)
@generation_options(TEXT2IMAGE_DEFAULT_STEPS)
@server_options(TASK)
@model_options(TASK)
def generate_image(
    prompt: str | None,
    prompts_file: TextIO | None,
    output: Path,
    num_images: int,
    guidance_scale: float,
    negative_prompt: str | None,
    scheduler: str,
    init_image: str | None,
    strength: float | None,
    mask: str | None,
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
    """Generate images from a text PROMPT (or many prompts with --prompts-file).

    With --server URL the images are made by that opea-media service (its jobs API) and written
    here as a local run writes them.
    """
    ctx = click.get_current_context()
    prompts = ([prompt] if prompt is not None else []) + (read_prompts(prompts_file) if prompts_file else [])
    if not prompts and prompts_file is not None:
        raise InvalidInput(f"{prompts_file.name} holds no prompt: every line is blank or a # comment")
    if not prompts:
        raise click.UsageError("give a PROMPT or --prompts-file")
    if init_image is None:
        if mask is not None:
            raise click.UsageError("--mask needs --init-image, the image to inpaint")
        # OPEA_MEDIA_STRENGTH sets the strength of image-to-image runs; a plain run has none.
        if strength is not None and given(ctx, "strength"):
            raise click.UsageError("--strength needs --init-image, the image to start from")
        strength = None
    elif strength is None:
        strength = TEXT2IMAGE_DEFAULT_STRENGTH
    params = Text2ImageParams(
        prompt=prompts[0],
        negative_prompt=negative_prompt,
        num_images_per_prompt=num_images,
        num_inference_steps=steps,
        guidance_scale=guidance_scale,
        height=height,
        width=width,
        seed=seed,
        scheduler=scheduler,
        strength=strength,
    )
    refused: dict[str, str] = {}
    if init_image is not None:
        refused["init_image"] = "the jobs API makes images from text only"
    if scheduler != TEXT2IMAGE_DEFAULT_SCHEDULER:
        refused["scheduler"] = (
            f"the jobs API takes no scheduler; the service uses {TEXT2IMAGE_DEFAULT_SCHEDULER}"
        )
    check_flags(ctx, TASK, server=server, refused=refused)
    if server is not None:
        run_remote(server=server, api_key=api_key, prompts=prompts, output=output, params=params, quiet=quiet)
        return
    choice = ModelChoice(model, device, dtype, Tuning(**levers), allow_pickle_weights)
    run(
        prompts=prompts,
        output=output,
        params=params,
        model=choice,
        init_image=init_image,
        mask=mask,
        quiet=quiet,
    )


def read_prompts(lines: Iterable[str]) -> list[str]:
    prompts = [line.strip() for line in lines]
    return [p for p in prompts if p and not p.startswith("#")]


def run(
    *,
    prompts: list[str],
    output: Path,
    params: Text2ImageParams,
    model: ModelChoice,
    init_image: str | None = None,
    mask: str | None = None,
    quiet: bool = False,
) -> list[Path]:
    """Write `params.num_images_per_prompt` PNGs per prompt; returns the paths in prompt order.

    With `init_image` (a file or URL) every prompt edits that image: image-to-image, or inpainting
    under `mask` (white: repaint); `params.strength` None there means the default strength.
    """
    from ..media.files import write_atomic
    from ..media.images import encode_png
    from ..metadata import text2image_metadata

    _check_png(output)
    if mask is not None and init_image is None:
        raise InvalidInput("a mask needs an init image to inpaint")
    image: Image.Image | None = None
    mask_image: Image.Image | None = None
    if init_image is not None:
        # Before the model loads: a missing file costs nothing.
        read = read_images([init_image] if mask is None else [init_image, mask])
        image, mask_image = read[0], (read[1] if mask is not None else None)
        if params.strength is None:
            params = dataclasses.replace(params, strength=TEXT2IMAGE_DEFAULT_STRENGTH)
    elif params.strength is not None:
        raise InvalidInput("a strength needs an init image to start from")
    requests, paths = _plan(prompts, output, params)

    reporter = Reporter(quiet=quiet)
    with reporter.status(f"Loading {model.ref}..."):
        t2i = model.registry().text2image(model.ref)
    written: list[Path] = []
    for i, request in enumerate(requests):
        request = t2i.complete(request)
        label = _label(i, len(requests))
        if image is None:
            with reporter.steps(label, params.num_inference_steps) as on_step:
                images = t2i.generate([request], on_step=on_step)[0]
        else:
            with reporter.steps(label, t2i.edit_steps(request)) as on_step:
                images = t2i.edit(request, image, mask=mask_image, on_step=on_step)
        for made, image_params in zip(images, per_output(request, len(images)), strict=True):
            path = paths[len(written)]
            write_atomic(path, encode_png(made, metadata=text2image_metadata(image_params, model=model.ref)))
            written.append(path)
            reporter.info(f"{path} (seed {image_params.seed})")
    return written


def run_remote(
    *,
    server: str,
    api_key: str | None,
    prompts: list[str],
    output: Path,
    params: Text2ImageParams,
    quiet: bool = False,
) -> list[Path]:
    """run() on the service at `server`: one job per prompt, its PNGs written as they came."""
    _check_png(output)
    requests, paths = _plan(prompts, output, params)
    jobs = [
        RemoteJob(
            label=_label(i, len(requests)),
            body=text2image_body(request),
            steps=request.num_inference_steps,
            outputs=request.num_images_per_prompt,
        )
        for i, request in enumerate(requests)
    ]
    reporter = Reporter(quiet=quiet)
    written: list[Path] = []
    for path, file in run_jobs(
        TASK, server=server, api_key=api_key, jobs=jobs, formats=["png"], paths=paths, reporter=reporter
    ):
        written.append(path)
        reporter.info(f"{path} (seed {file['seed']})")
    return written


def _plan(
    prompts: list[str], output: Path, params: Text2ImageParams
) -> tuple[list[Text2ImageParams], list[Path]]:
    """Each prompt's params and every image's path, the output folder proven writable.

    Consecutive seeds, one per image: any single image can be made again on its own.
    """
    from ..media.files import prepare_output

    base_seed = resolve_seed(params.seed)
    num_images = params.num_images_per_prompt
    requests = [
        dataclasses.replace(params, prompt=text, seed=image_seed(base_seed, i * num_images))
        for i, text in enumerate(prompts)
    ]
    paths = numbered_paths(output, len(prompts) * num_images)
    prepare_output(output)
    return requests, paths


def _check_png(output: Path) -> None:
    if output.suffix.lower() != ".png":
        raise InvalidInput(f"the output must be a .png file, got {str(output)!r}")


def _label(index: int, count: int) -> str:
    return f"prompt {index + 1}/{count}" if count > 1 else "generating"
