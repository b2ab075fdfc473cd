"""The AUTOMATIC1111 API subset in-process: lenient bodies, info as a JSON string, batch_size x
n_iter, samplers, options, progress of the running job, interrupt, img2img, auth, error shape.
webuiapi itself talks to a real process in tests/integration/test_clients.py."""

from __future__ import annotations

import asyncio
import base64
import io
import json
from typing import Any

import pytest
from aiohttp.test_utils import TestClient
from PIL import Image
from server_support import GatedText2Image, b64, decode_png, fake_handle, png_bytes, until

from opea_media.server.keys import WORKER

# What webuiapi 0.9.17 sends for txt2img(prompt=..., seed=7, steps=2), field for field.
WEBUIAPI_TXT2IMG: dict[str, Any] = {
    "enable_hr": False, "hr_scale": 2, "hr_upscaler": "Latent", "hr_second_pass_steps": 0,
    "hr_resize_x": 0, "hr_resize_y": 0, "hr_checkpoint_name": None, "hr_sampler_name": None,
    "hr_scheduler": None, "hr_prompt": "", "hr_negative_prompt": "", "denoising_strength": 0.7,
    "firstphase_width": 0, "firstphase_height": 0, "prompt": "a red fox", "styles": [], "seed": 7,
    "subseed": -1, "subseed_strength": 0.0, "seed_resize_from_h": 0, "seed_resize_from_w": 0,
    "batch_size": 1, "n_iter": 1, "steps": 2, "cfg_scale": 7.0, "width": 64, "height": 64,
    "restore_faces": False, "tiling": False, "do_not_save_samples": False, "do_not_save_grid": False,
    "negative_prompt": "", "eta": 1.0, "s_churn": 0, "s_tmax": 0, "s_tmin": 0, "s_noise": 1,
    "override_settings": {}, "override_settings_restore_afterwards": True, "sampler_name": "Euler a",
    "scheduler": "automatic", "sampler_index": "Euler a", "script_name": None, "script_args": [],
    "send_images": True, "save_images": False, "alwayson_scripts": {},
}  # fmt: skip


@pytest.fixture
async def t2i(server_client, server_tiny_t2i) -> TestClient:  # type: ignore[no-untyped-def]
    return await server_client(server_tiny_t2i, service="text2image")


async def test_txt2img_takes_webuiapis_whole_body_and_answers_info_as_a_json_string(t2i: TestClient) -> None:
    response = await t2i.post("/sdapi/v1/txt2img", json={**WEBUIAPI_TXT2IMG, "batch_size": 2, "n_iter": 2})
    assert response.status == 200, await response.text()
    body = await response.json()
    assert set(body) == {"images", "parameters", "info"} and len(body["images"]) == 4
    image = decode_png(body["images"][0])  # raw base64, no data: prefix
    info = json.loads(body["info"])
    assert (info["seed"], info["all_seeds"]) == (7, [7, 8, 9, 10])
    assert (info["width"], info["height"], info["sampler_name"]) == (64, 64, "Euler a")
    assert len(info["infotexts"]) == 4 and info["infotexts"][0] == image.text["parameters"]  # type: ignore[attr-defined]
    assert "Seed: 7" in info["infotexts"][0] and info["comments"] == ""
    assert body["parameters"]["seed"] == 7


async def test_seed_minus_one_is_random_and_unknown_samplers_say_what_ran(t2i: TestClient) -> None:
    request = {"prompt": "x", "seed": -1, "steps": 2, "sampler_name": "UniPC", "scheduler": "karras"}
    info = json.loads((await (await t2i.post("/sdapi/v1/txt2img", json=request)).json())["info"])
    assert 0 <= info["seed"] < 2**32 and info["sampler_name"] == "DPM++ 2M"
    assert "'UniPC' is not available" in info["comments"] and "'karras'" in info["comments"]
    legacy = {"prompt": "x", "steps": 2, "sampler_name": "DPM++ 2M Karras"}
    info = json.loads((await (await t2i.post("/sdapi/v1/txt2img", json=legacy)).json())["info"])
    assert info["sampler_name"] == "DPM++ 2M" and "automatic schedule" in info["comments"]


async def test_refusals_have_automatic1111s_error_shape(t2i: TestClient) -> None:
    response = await t2i.post("/sdapi/v1/txt2img", json={"prompt": "x", "batch_size": 8, "n_iter": 2})
    assert response.status == 400
    body = await response.json()
    assert set(body) == {"error", "detail", "body", "errors"} and body["error"] == "InvalidInput"
    assert "batch_size x n_iter is 16 images" in body["detail"] and body["errors"].startswith("400: ")
    missing = await t2i.get("/sdapi/v1/nope")  # an unknown path answers our own shape
    assert set(await missing.json()) == {"detail", "status_code"}


async def test_the_model_options_and_what_is_available(t2i: TestClient) -> None:
    async def get(path: str) -> Any:
        response = await t2i.get("/sdapi/v1/" + path)
        assert response.status == 200, path
        return await response.json()

    assert (await get("sd-models"))[0] | {"title": "tiny", "model_name": "tiny"} == (await get("sd-models"))[
        0
    ]
    options = await get("options")
    assert options["sd_model_checkpoint"] == "tiny" and "forge_preset" not in options
    for path in ("upscalers", "latent-upscale-modes", "sd-vae", "sd-modules"):
        assert await get(path) == []
    assert await get("scripts") == {"txt2img": [], "img2img": []}
    assert "Euler a" in [s["name"] for s in await get("samplers")]
    assert [s["name"] for s in await get("schedulers")] == ["automatic"]
    # Open WebUI posts the whole options object back with the checkpoint it wants.
    posted = await t2i.post("/sdapi/v1/options", json={**options, "sd_model_checkpoint": "tiny"})
    assert posted.status == 200 and await posted.json() is None
    other = await t2i.post("/sdapi/v1/options", json={"sd_model_checkpoint": "sdxl"})
    assert other.status == 400 and "'sdxl' not found" in (await other.json())["detail"]
    idle = await get("progress")
    assert (idle["progress"], idle["eta_relative"], idle["state"]["job_count"]) == (0.0, 0.0, 0)


async def test_progress_follows_the_running_job_and_interrupt_stops_it(server_client) -> None:  # type: ignore[no-untyped-def]
    model = GatedText2Image()
    t2i = await server_client(fake_handle(model), service="text2image")
    running = asyncio.ensure_future(t2i.post("/sdapi/v1/txt2img", json={"prompt": "slow"}))
    await asyncio.get_running_loop().run_in_executor(None, model.running.wait, 5)
    await until(lambda: t2i.app[WORKER].progress is not None and t2i.app[WORKER].progress.step > 2)  # type: ignore[index,union-attr]
    progress = await (await t2i.get("/sdapi/v1/progress")).json()
    assert 0 < progress["progress"] < 1 and progress["eta_relative"] > 0
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] == 10_000
    assert progress["state"]["sampling_step"] > 2
    interrupted = await t2i.post("/sdapi/v1/interrupt")
    assert interrupted.status == 200 and await interrupted.json() == {}
    response = await running
    assert response.status == 409 and "interrupted" in (await response.json())["detail"]
    assert model.interrupted == [["slow"]]
    model.gate.set()
    assert (await (await t2i.get("/sdapi/v1/progress")).json())["state"]["job_count"] == 0


def _data_uri(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


async def test_img2img_and_inpainting(t2i: TestClient) -> None:
    init = Image.new("RGB", (96, 64), (200, 30, 30))
    request = {
        "prompt": "x",
        "init_images": [_data_uri(init)],
        "steps": 4,
        "denoising_strength": 0.5,
        "seed": 3,
    }
    response = await t2i.post("/sdapi/v1/img2img", json={**request, "include_init_images": False})
    assert response.status == 200, await response.text()
    body = await response.json()
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.5 and (info["width"], info["height"]) == (
        80,
        64,
    )  # the input's shape, at least 64
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 48, 64))
    inpainted = await t2i.post(
        "/sdapi/v1/img2img", json={**request, "mask": b64(_png(mask)), "width": 64, "height": 64}
    )
    assert inpainted.status == 200, await inpainted.text()
    # What inpainting keeps is the models layer's to test (the tiny VAE's decode is noise).
    assert decode_png((await inpainted.json())["images"][0]).size == (64, 64)
    none = await t2i.post("/sdapi/v1/img2img", json={"prompt": "x", "init_images": []})
    assert none.status == 400 and "init_images" in (await none.json())["detail"]


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


async def test_an_empty_basic_header_is_ignored_without_a_key(t2i: TestClient) -> None:
    for header in ("Basic ", "Basic", "Basic Og=="):  # Open WebUI and SillyTavern send these
        response = await t2i.get("/sdapi/v1/options", headers={"Authorization": header})
        assert response.status == 200


async def test_with_a_key_basic_auth_carries_it_as_the_password(server_client, server_tiny_t2i) -> None:  # type: ignore[no-untyped-def]
    t2i = await server_client(server_tiny_t2i, service="text2image", api_key="k3y")
    refused = await t2i.get("/sdapi/v1/options", headers={"Authorization": "Basic "})
    assert refused.status == 401 and (await refused.json())["error"] == "Unauthorized"
    ok = base64.b64encode(b"user:k3y").decode()
    assert (await t2i.get("/sdapi/v1/options", headers={"Authorization": f"Basic {ok}"})).status == 200
    assert (await t2i.get("/sdapi/v1/options", headers={"Authorization": "Bearer k3y"})).status == 200
    assert (await t2i.get("/sdapi/v1/unknown")).status == 401  # unknown /sdapi paths are guarded too
    assert png_bytes()  # keeps the helper import honest


async def test_sillytaverns_requests(t2i: TestClient) -> None:
    # Its backend calls these with `Authorization: Basic ` (empty auth) and posts the browser's
    # whole body, its own url and auth fields included (src/endpoints/stable-diffusion.js).
    basic = {"Authorization": "Basic "}
    for path in (
        "options",
        "sd-models",
        "samplers",
        "schedulers",
        "upscalers",
        "latent-upscale-modes",
        "sd-vae",
    ):
        assert (await t2i.get(f"/sdapi/v1/{path}", headers=basic)).status == 200, path
    body = {
        "url": "http://localhost:7860", "auth": "", "prompt": "a red fox", "negative_prompt": "",
        "sampler_name": "DDIM", "scheduler": "normal", "steps": 2, "cfg_scale": 7, "width": 64,
        "height": 64, "restore_faces": False, "enable_hr": False, "hr_upscaler": "Latent",
        "hr_scale": 2.0, "denoising_strength": 0.7, "hr_second_pass_steps": 0,
        "override_settings": {"CLIP_stop_at_last_layers": 1}, "override_settings_restore_afterwards": True,
        "clip_skip": 1, "save_images": True, "send_images": True, "do_not_save_grid": False,
        "do_not_save_samples": False,
    }  # fmt: skip
    response = await t2i.post("/sdapi/v1/txt2img", json=body, headers=basic)
    assert response.status == 200, await response.text()
    data = await response.json()
    decode_png(data["images"][0])
    assert json.loads(data["info"])["sampler_name"] == "DDIM"
    progress = await (await t2i.get("/sdapi/v1/progress", headers=basic)).json()
    assert progress["progress"] == 0.0 and progress["state"]["job_count"] == 0  # its /set-model wait


async def test_librechats_stable_diffusion_tool(t2i: TestClient) -> None:
    # api/app/clients/tools/structured/StableDiffusion.js: a fixed payload, no auth headers.
    payload = {
        "prompt": "a red fox",
        "negative_prompt": "",
        "cfg_scale": 4.5,
        "steps": 2,
        "width": 64,
        "height": 64,
    }
    data = await (await t2i.post("/sdapi/v1/txt2img", json=payload)).json()
    info = json.loads(data["info"])
    assert (info["width"], info["height"]) == (64, 64) and isinstance(info["seed"], int)
    assert info["infotexts"][0].split("\n").pop().startswith("Steps: 2")  # what it keeps as metadata
    assert "," not in data["images"][0]  # it decodes the text before the first comma
