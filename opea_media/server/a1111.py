"""The AUTOMATIC1111 API subset on the text2image service (/sdapi/v1/*), for webuiapi, Open WebUI,
SillyTavern and LibreChat as they are: txt2img and img2img through the one worker queue, the
running job's progress, interrupt, the model and its options, samplers and schedulers.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web
from PIL import Image
from pydantic import BaseModel

from .. import __version__
from ..errors import InvalidInput
from ..media.fetch import UrlPolicy
from ..media.images import decode_mask, png_base64
from ..media.sources import load_image, source_bytes
from ..metadata import text2image_metadata
from ..params import (
    NUM_IMAGES,
    TEXT2IMAGE_DEFAULT_GUIDANCE,
    TEXT2IMAGE_DEFAULT_STEPS,
    TEXT2IMAGE_DEFAULT_STRENGTH,
    Text2ImageParams,
    per_output,
    resolve_seed,
    size_like,
)
from .a1111_wire import (
    AUTOMATIC_SCHEDULE,
    SAMPLERS,
    GenerationResponse,
    Img2ImgRequest,
    Options,
    OptionsUpdate,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    SchedulerItem,
    ScriptsList,
    SdModel,
    Txt2ImgRequest,
    find_sampler,
    schedule_note,
)
from .bodies import body_done
from .jobs import EditRequest, Payload
from .keys import CONFIG, IO_POOL, WORKER
from .running import admitted, before_deadline, each, encoded_response, run_job
from .validation import read_json_body


def _json(body: BaseModel | list[BaseModel] | Mapping[str, Any] | None) -> web.Response:
    if isinstance(body, BaseModel):
        text = body.model_dump_json()
    elif isinstance(body, list):
        text = "[" + ",".join(item.model_dump_json() for item in body) + "]"
    else:
        text = json.dumps(body)
    return web.Response(text=text, content_type="application/json")


def _params(
    body: Txt2ImgRequest, *, size: tuple[int, int] | None, strength: float | None
) -> tuple[Text2ImageParams, list[str]]:
    """The params a request asks for, and notes on what ran instead of what was asked."""
    sampler, sampler_note = find_sampler(body.sampler_name or body.sampler_index)
    notes = [note for note in (sampler_note, schedule_note(body.scheduler)) if note]
    count = (body.batch_size or 1) * (body.n_iter or 1)
    if count > NUM_IMAGES.max:
        raise InvalidInput(
            f"batch_size x n_iter is {count} images; the limit is {int(NUM_IMAGES.max)}", field="batch_size"
        )
    params = Text2ImageParams(
        prompt=body.prompt,
        negative_prompt=body.negative_prompt or None,
        num_images_per_prompt=count,
        num_inference_steps=body.steps or TEXT2IMAGE_DEFAULT_STEPS,
        guidance_scale=body.cfg_scale if body.cfg_scale is not None else TEXT2IMAGE_DEFAULT_GUIDANCE,
        width=size[0] if size else None,
        height=size[1] if size else None,
        seed=resolve_seed(body.seed),
        scheduler=sampler.scheduler,
        strength=strength,
    )
    return params, notes


def _sampler_name(scheduler: str) -> str:
    return next(s.name for s in SAMPLERS if s.scheduler == scheduler)


async def _answer(
    request: web.Request,
    body: Txt2ImgRequest,
    params: Text2ImageParams,
    payload: Payload,
    notes: list[str],
    deadline: float,
) -> web.Response:
    job, images = await run_job(request, payload, deadline)
    model = request.app[WORKER].handle.ref
    own = per_output(params, len(images))
    texts = [text2image_metadata(p, model=model) for p in own]
    encoded = await each(request.app[IO_POOL], png_base64, *zip(images, texts, strict=True))
    assert params.seed is not None
    info = {
        "prompt": params.prompt,
        "all_prompts": [params.prompt] * len(images),
        "negative_prompt": params.negative_prompt or "",
        "all_negative_prompts": [params.negative_prompt or ""] * len(images),
        "seed": params.seed,
        "all_seeds": [p.seed for p in own],
        "subseed": -1,
        "all_subseeds": [-1] * len(images),
        "subseed_strength": 0,
        "width": params.width,
        "height": params.height,
        "sampler_name": _sampler_name(params.scheduler),
        "cfg_scale": params.guidance_scale,
        "steps": params.num_inference_steps,
        "batch_size": body.batch_size or 1,
        "sd_model_name": model,
        "sd_model_hash": None,
        "denoising_strength": params.strength,
        "extra_generation_params": {"Schedule type": "Automatic"},
        "index_of_first_image": 0,
        "infotexts": [text["parameters"] for text in texts],
        "styles": [],
        "job_timestamp": _timestamp(time.time() - (time.monotonic() - job.enqueued_at)),
        "clip_skip": 1,
        "comments": "; ".join(notes),
        "version": f"opea-media {__version__}",
    }
    parameters = body.model_dump(exclude={"init_images", "mask"}) | {"seed": params.seed}
    response = GenerationResponse(
        images=encoded if body.send_images is not False else [], parameters=parameters, info=json.dumps(info)
    )
    return await encoded_response(request.app[IO_POOL], response)


async def txt2img(request: web.Request) -> web.Response:
    app = request.app
    config, worker = app[CONFIG], app[WORKER]
    async with admitted(request) as deadline:
        async with before_deadline(deadline, config.request_timeout):
            body = await read_json_body(request, Txt2ImgRequest)
        size = (body.width, body.height) if body.width and body.height else None
        params, notes = _params(body, size=size, strength=None)
        params = worker.model.complete(params)
        return await _answer(request, body, params, params, notes, deadline)


async def img2img(request: web.Request) -> web.Response:
    app = request.app
    config, worker = app[CONFIG], app[WORKER]
    async with admitted(request) as deadline:
        async with before_deadline(deadline, config.request_timeout):
            body, image, mask = await _img2img_inputs(request)
        body_done(request)
        size = (body.width, body.height) if body.width and body.height else None
        if size is None:
            native_height, native_width = worker.model.native_size
            size = size_like(*image.size, area=native_height * native_width)
        strength = body.denoising_strength
        params, notes = _params(
            body, size=size, strength=TEXT2IMAGE_DEFAULT_STRENGTH if strength is None else strength
        )
        params = worker.model.complete(params)
        return await _answer(request, body, params, EditRequest(params, (image,), mask), notes, deadline)


async def _img2img_inputs(request: web.Request) -> tuple[Img2ImgRequest, Image.Image, Image.Image | None]:
    """The body without its base64 (the answer echoes everything else), its image and its mask."""
    config, pool = request.app[CONFIG], request.app[IO_POOL]
    policy = UrlPolicy(allow_private=config.allow_private_urls, allowed_hosts=config.allowed_url_hosts)
    body = await read_json_body(request, Img2ImgRequest, holds_body=True)
    image = await load_image(
        body.init_images[0],
        field="init_images[0]",
        policy=policy,
        fetch_timeout=config.fetch_timeout,
        pool=pool,
    )
    mask = None
    if body.mask:
        data = await source_bytes(
            body.mask, field="mask", policy=policy, fetch_timeout=config.fetch_timeout, files=False, pool=pool
        )
        mask = await _in_pool(request, _decode_mask, data, invert=bool(body.inpainting_mask_invert))
    return body.model_copy(update={"init_images": [], "mask": None}), image, mask


def _decode_mask(data: bytes, *, invert: bool) -> Image.Image:
    mask = decode_mask(data, source="mask")
    return mask.point(lambda v: 255 - v) if invert else mask


def _timestamp(wall: float) -> str:
    return time.strftime("%Y%m%d%H%M%S", time.localtime(wall))  # AUTOMATIC1111's job_timestamp


async def _in_pool(request: web.Request, function: Any, *args: Any, **kwargs: Any) -> Image.Image:
    return await asyncio.get_running_loop().run_in_executor(
        request.app[IO_POOL], functools.partial(function, *args, **kwargs)
    )


# --- the running job, the model, what is available ---------------------------------------------------


async def progress(request: web.Request) -> web.Response:
    """The running job's real progress; `job_count` 0 and progress 0 when idle (clients poll for that)."""
    worker = request.app[WORKER]
    running, waiting = worker.progress, worker.queue_depth
    if running is None:
        state = ProgressState(
            interrupted=False, job="", job_count=waiting, job_timestamp="0", sampling_step=0, sampling_steps=0
        )
        return _json(ProgressResponse(progress=0.0, eta_relative=0.0, state=state))
    done = running.step / running.total if running.total else 0.0
    elapsed = time.monotonic() - running.started
    eta = elapsed / done - elapsed if done > 0 else 0.0
    started = time.time() - elapsed
    state = ProgressState(
        interrupted=worker.interrupted,
        job="txt2img",
        job_count=running.jobs + waiting,
        job_timestamp=_timestamp(started),
        sampling_step=running.step,
        sampling_steps=running.total,
    )
    return _json(ProgressResponse(progress=min(1.0, done), eta_relative=max(0.0, eta), state=state))


async def interrupt(request: web.Request) -> web.Response:
    """Stop the running job at its next step (its client gets 409); {} as AUTOMATIC1111 answers."""
    request.app[WORKER].interrupt()
    return _json({})


def _title(request: web.Request) -> str:
    return request.app[WORKER].handle.ref


async def sd_models(request: web.Request) -> web.Response:
    ref = _title(request)
    return _json([SdModel(title=ref, model_name=ref.rstrip("/").rsplit("/", 1)[-1], filename=ref)])


async def get_options(request: web.Request) -> web.Response:
    return _json(Options(sd_model_checkpoint=_title(request)))


async def set_options(request: web.Request) -> web.Response:
    """Any options object is taken; a checkpoint must be the loaded model (there is one). null."""
    body = await read_json_body(request, OptionsUpdate)
    wanted = body.sd_model_checkpoint
    ref = _title(request)
    if wanted is not None and wanted not in (ref, ref.rstrip("/").rsplit("/", 1)[-1]):
        raise InvalidInput(
            f"model {wanted[:100]!r} not found; this service runs {ref!r}", field="sd_model_checkpoint"
        )
    return _json(None)


async def samplers(request: web.Request) -> web.Response:
    return _json([SamplerItem(name=s.name, aliases=list(s.aliases)) for s in SAMPLERS])


async def schedulers(request: web.Request) -> web.Response:
    return _json([SchedulerItem(name=AUTOMATIC_SCHEDULE, label="Automatic")])


async def empty_list(request: web.Request) -> web.Response:
    return _json([])


async def scripts(request: web.Request) -> web.Response:
    return _json(ScriptsList())
