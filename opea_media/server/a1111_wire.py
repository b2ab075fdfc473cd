"""The AUTOMATIC1111 API subset's bodies, and how its sampler names map onto our schedulers.

Its clients send every field they know (webuiapi about 45, SillyTavern its own `url` and `auth`):
unknown fields are ignored, as AUTOMATIC1111 ignores them. The fields we use keep params.py's
limits; null means the default, and `seed: -1` means a random seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, Field, GetJsonSchemaHandler, RootModel, StrictBool, StrictInt
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from ..params import TEXT2IMAGE_DEFAULT_SCHEDULER
from .validation import LenientBody, Ruled
from .wire import T2I


@dataclass(frozen=True)
class Sampler:
    name: str  # AUTOMATIC1111's
    aliases: tuple[str, ...]
    scheduler: str  # ours (params.SCHEDULERS)


SAMPLERS = (
    Sampler("DPM++ 2M", ("k_dpmpp_2m",), "dpm++"),
    Sampler("Euler a", ("k_euler_a", "k_euler_ancestral"), "euler-a"),
    Sampler("Euler", ("k_euler",), "euler"),
    Sampler("DDIM", ("ddim",), "ddim"),
    Sampler("PLMS", ("plms",), "pndm"),  # diffusers' PNDM scheduler runs PLMS steps
)
DEFAULT_SAMPLER = next(s for s in SAMPLERS if s.scheduler == TEXT2IMAGE_DEFAULT_SCHEDULER)
# AUTOMATIC1111's schedule types; we run each sampler's own ("Automatic") and say so otherwise.
AUTOMATIC_SCHEDULE = "automatic"
_BY_NAME = {name.lower(): s for s in SAMPLERS for name in (s.name, *s.aliases)}
# Names of AUTOMATIC1111 before 1.9 carried the schedule: "DPM++ 2M Karras".
_SCHEDULE_SUFFIXES = (" karras", " exponential")


def find_sampler(requested: str | None) -> tuple[Sampler, str | None]:
    """The sampler to run for an AUTOMATIC1111 name (any case, alias or legacy name), and a note
    when it is not the one asked for."""
    if not requested:
        return DEFAULT_SAMPLER, None
    key = requested.strip().lower()
    for suffix in _SCHEDULE_SUFFIXES:
        key = key.removesuffix(suffix)
    found = _BY_NAME.get(key)
    if found is None:
        note = f"sampler {requested[:60]!r} is not available here; used {DEFAULT_SAMPLER.name}"
        return DEFAULT_SAMPLER, note
    if key != requested.strip().lower():
        return found, f"ran {found.name} with its automatic schedule for {requested[:60]!r}"
    return found, None


def schedule_note(scheduler: str | None) -> str | None:
    if scheduler is None or scheduler.strip().lower() in ("", AUTOMATIC_SCHEDULE):
        return None
    return f"schedule type {scheduler[:60]!r} is not available here; used Automatic"


def _random_seed(value: Any) -> Any:
    return None if value == -1 else value  # AUTOMATIC1111's "random"


@dataclass(frozen=True)
class _OrMinusOne:
    """Annotated metadata: the schema also allows -1 (which the validator turns into None)."""

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {"anyOf": [{"const": -1}, handler(schema)]}


Seed = Annotated[Annotated[int, Ruled(T2I["seed"]), _OrMinusOne()] | None, BeforeValidator(_random_seed)]


class Txt2ImgRequest(LenientBody):
    """POST /sdapi/v1/txt2img: the fields we use; any others are ignored."""

    prompt: Annotated[str, Ruled(T2I["prompt"])] = Field(description="What to draw.")
    negative_prompt: Annotated[str, Ruled(T2I["negative_prompt"])] | None = None
    seed: Seed = Field(default=None, description="-1, null or absent: random; image k uses seed + k.")
    batch_size: Annotated[int, Ruled(T2I["num_images_per_prompt"])] | None = 1
    n_iter: Annotated[int, Ruled(T2I["num_images_per_prompt"])] | None = Field(
        default=1, description="Batches; batch_size x n_iter images in all, at most 8."
    )
    steps: Annotated[int, Ruled(T2I["num_inference_steps"])] | None = None
    cfg_scale: Annotated[float, Ruled(T2I["guidance_scale"])] | None = None
    width: Annotated[int, Ruled(T2I["width"])] | None = None
    height: Annotated[int, Ruled(T2I["height"])] | None = None
    sampler_name: str | None = Field(
        default=None,
        description="DPM++ 2M (the default), Euler a, Euler, DDIM or PLMS, by name or alias, any case; "
        "another runs the default, which info says.",
    )
    sampler_index: str | None = Field(default=None, description="The old name of sampler_name.")
    scheduler: str | None = Field(default=None, description="Only automatic runs; info says otherwise.")
    send_images: StrictBool | None = True


class Img2ImgRequest(Txt2ImgRequest):
    """POST /sdapi/v1/img2img: the first of init_images, repainted where the mask is white."""

    init_images: list[str] = Field(
        min_length=1, description="Base64 images, data URIs or http(s) URLs; the first is used."
    )
    mask: str | None = Field(default=None, description="White: repaint; black: keep.")
    inpainting_mask_invert: StrictInt | None = Field(default=0, ge=0, le=1, description="1: black repaints.")
    denoising_strength: Annotated[float, Ruled(T2I["strength"])] | None = None


class GenerationResponse(BaseModel):
    images: list[str] = Field(description="PNGs, raw base64, with the parameters as a text chunk.")
    parameters: dict[str, Any]
    info: str = Field(description="A JSON object as a string: seed, all_seeds, infotexts, ...")


class SdModel(BaseModel):
    title: str
    model_name: str
    hash: str | None = None
    sha256: str | None = None
    filename: str
    config: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, str] = Field(default_factory=dict)


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None = None
    default_rho: float = -1
    need_inner_model: bool = False


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool
    stopping_generation: bool = False
    job: str
    job_count: int = Field(description="Jobs running or waiting; 0 when idle.")
    job_timestamp: str
    job_no: int = 0
    sampling_step: int
    sampling_steps: int


class ProgressResponse(BaseModel):
    progress: float = Field(ge=0, le=1)
    eta_relative: float = Field(ge=0)
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class ScriptsList(BaseModel):
    txt2img: list[str] = Field(default_factory=list)
    img2img: list[str] = Field(default_factory=list)


class Options(BaseModel):
    """GET /sdapi/v1/options: what clients read (the checkpoint); POST takes any object."""

    sd_model_checkpoint: str
    sd_checkpoint_hash: str | None = None
    samples_format: str = "png"


class OptionsUpdate(LenientBody):
    """POST /sdapi/v1/options: any options object; only the checkpoint means anything here."""

    sd_model_checkpoint: str | None = Field(default=None, description="Must name the loaded model.")


# List and bare answers, for the OpenAPI document.
class SdModelList(RootModel[list[SdModel]]):
    pass


class SamplerList(RootModel[list[SamplerItem]]):
    pass


class SchedulerList(RootModel[list[SchedulerItem]]):
    pass


class EmptyList(RootModel[list[dict[str, Any]]]):
    """Always []: nothing of the kind here."""


class Nothing(RootModel[None]):
    """null, as AUTOMATIC1111 answers."""


class EmptyObject(RootModel[dict[str, Any]]):
    """{}, as AUTOMATIC1111 answers."""
