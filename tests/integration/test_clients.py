"""The clients people use, unmodified, against `opea-media serve --model tiny` as a real process:
the official `openai` package, `webuiapi` (AUTOMATIC1111's Python client), and OPEA's own two
test scripts' curl requests as they are written (a data URI for the image URL they fetch from
the Hub, which a test cannot reach)."""

from __future__ import annotations

import base64
import io
import json
import shutil
import subprocess
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
import webuiapi
from PIL import Image

from opea_media.models import sources

from .live_service import LiveService, start_service

FAST = {"num_inference_steps": 2}


def _png(
    size: tuple[int, int] = (96, 64), color: tuple[int, ...] = (200, 30, 30), mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def _decode(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    image.load()
    return image


@pytest.fixture(scope="module")
def t2i(tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, tiny_t2i: Any) -> Iterator[LiveService]:
    folder = tmp_path_factory.mktemp("clients-t2i")
    live = start_service(
        "text2image", "--output-dir", str(folder / "out"), log_dir=folder, cache_dir=cache_dir
    )
    try:
        live.wait_ready()
        yield live
    finally:
        live.kill()


@pytest.fixture
def client(t2i: LiveService) -> openai.OpenAI:
    return openai.OpenAI(base_url=t2i.url("/v1"), api_key="unused")


# --- the openai package ---------------------------------------------------------------------------


def test_openai_generate_b64_json(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="gpt-image-1", prompt="a red fox", n=2, size="64x64", response_format="b64_json",
        extra_body={"seed": 9, **FAST},
    )  # fmt: skip
    assert result.size == "64x64" and result.output_format == "png" and result.data is not None
    images = [_decode(image.b64_json or "") for image in result.data]
    assert [image.size for image in images] == [(64, 64), (64, 64)]
    assert "Seed: 10" in images[1].text["parameters"]  # type: ignore[attr-defined]


def test_openai_generate_url(client: openai.OpenAI) -> None:
    result = client.images.generate(
        model="dall-e-3", prompt="a red fox", response_format="url", output_format="jpeg", extra_body=FAST
    )
    assert result.data is not None and result.data[0].url
    with urllib.request.urlopen(result.data[0].url, timeout=30) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        assert Image.open(io.BytesIO(response.read())).format == "JPEG"


def test_openai_stream_with_partial_images(client: openai.OpenAI) -> None:
    stream = client.images.generate(
        prompt="a red fox", stream=True, partial_images=2, size="64x64", extra_body={"num_inference_steps": 4}
    )
    events = list(stream)
    assert [event.type for event in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"
    ]
    assert [getattr(event, "partial_image_index", None) for event in events[:2]] == [0, 1]
    assert _decode(events[-1].b64_json).size == (64, 64)


def test_openai_edit_one_and_several_images(client: openai.OpenAI) -> None:
    one = client.images.edit(
        image=("fox.png", _png(), "image/png"), prompt="a blue fox", extra_body={"strength": 0.5, **FAST}
    )
    assert one.data is not None and _decode(one.data[0].b64_json or "").size == (80, 64)
    several = client.images.edit(
        image=[("a.png", _png(), "image/png"), ("b.png", _png(color=(0, 90, 0)), "image/png")],
        mask=("mask.png", _png((96, 64), (0, 0, 0, 0), "RGBA"), "image/png"),
        prompt="a blue fox",
        size="64x64",
        extra_body={"strength": 0.5, **FAST},
    )
    assert several.data is not None and len(several.data) == 2


def test_openai_models(client: openai.OpenAI) -> None:
    assert [model.id for model in client.models.list()] == ["tiny"]
    assert client.models.retrieve("tiny").id == "tiny"


def test_openai_error_shows_our_message(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.images.generate(prompt="a fox", size="100x100")
    assert "size: its width must be a multiple of 8, got 100" in caught.value.message
    assert caught.value.param == "size" and caught.value.code == "invalid_value"


def test_openai_does_not_retry_a_500(tmp_path: Path, cache_dir: Path, tiny_t2i: Any) -> None:
    # A model folder that loads but cannot run: its tokenizer pads prompts past what the text
    # encoder's position embeddings hold, so every generation fails inside the pipeline.
    folder = tmp_path / "mismatched-tokenizer"
    shutil.copytree(sources.resolve("text2image", "tiny", cache_root=cache_dir).location, folder)
    config_path = folder / "tokenizer" / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "model_max_length": 80}))
    live = start_service("text2image", "--model", str(folder), log_dir=tmp_path, cache_dir=cache_dir)
    try:
        live.wait_ready()
        broken = openai.OpenAI(base_url=live.url("/v1"), api_key="unused")  # max_retries: the default 2
        with pytest.raises(openai.InternalServerError) as caught:
            broken.images.generate(prompt="a fox", extra_body=FAST)
        assert "inference failed" in caught.value.message
        assert live.requests_by_status("/v1/images/generations") == {500: 1}  # sent once, not 3 times
    finally:
        live.kill()


# --- webuiapi (AUTOMATIC1111's client) ------------------------------------------------------------


@pytest.fixture
def webui(t2i: LiveService) -> webuiapi.WebUIApi:
    return webuiapi.WebUIApi(host="127.0.0.1", port=t2i.port)


def test_webuiapi_txt2img(webui: webuiapi.WebUIApi) -> None:
    result = webui.txt2img(prompt="a red fox", seed=5, steps=2, width=64, height=64, batch_size=2)
    assert [image.size for image in result.images] == [(64, 64), (64, 64)]
    assert result.info["all_seeds"] == [5, 6] and "Seed: 5" in result.info["infotexts"][0]
    assert result.parameters["prompt"] == "a red fox"


def test_webuiapi_img2img(webui: webuiapi.WebUIApi) -> None:
    init = Image.open(io.BytesIO(_png()))
    result = webui.img2img(
        images=[init], prompt="a blue fox", steps=4, width=64, height=64, denoising_strength=0.5
    )
    assert result.image.size == (64, 64) and result.info["denoising_strength"] == 0.5


def test_webuiapi_models_and_current_model(webui: webuiapi.WebUIApi) -> None:
    assert webui.util_get_model_names() == ["tiny"]
    assert webui.util_get_current_model() == "tiny"
    webui.util_set_model("tiny")  # POST /options with the checkpoint; must answer JSON
    assert "Euler a" in webui.util_get_sampler_names()
    assert webui.util_get_scheduler_names() == ["automatic"]


def test_webuiapi_interrupt_stops_the_running_job(webui: webuiapi.WebUIApi) -> None:
    outcome: dict[str, Any] = {}

    def generate() -> None:
        try:
            outcome["result"] = webui.txt2img(prompt="slow", steps=150, width=256, height=256, batch_size=4)
        except RuntimeError as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=generate)
    thread.start()
    deadline = time.monotonic() + 60
    while webui.get_progress()["state"]["sampling_step"] < 1:
        assert time.monotonic() < deadline, "the job never started"
        time.sleep(0.05)
    progress = webui.get_progress()
    assert progress["state"]["job_count"] == 1 and progress["state"]["sampling_steps"] >= 150
    assert webui.interrupt() == {}
    thread.join(60)
    assert "error" in outcome and outcome["error"].args[0] == 409, outcome
    webui.util_wait_for_ready(check_interval=0.2)  # progress 0 and job_count 0 once idle


# --- OPEA's own test scripts' requests --------------------------------------------------------------


def test_opea_text2image_test_request(t2i: LiveService) -> None:
    # GenAIComps tests/text2image/test_text2image_native.sh, with its URL pointed here.
    result = subprocess.run(
        ["curl", "-sS", t2i.url("/v1/text2image"), "-XPOST",
         "-d", '{"prompt":"An astronaut riding a green horse", "num_images_per_prompt":1}',
         "-H", "Content-Type: application/json", "--write-out", "HTTPSTATUS:%{http_code}"],
        capture_output=True, text=True, timeout=300, check=True,
    )  # fmt: skip
    assert result.stdout.endswith("HTTPSTATUS:200") and '"images"' in result.stdout


def test_opea_image2video_test_request(tmp_path: Path, cache_dir: Path, tiny_i2v: Any) -> None:
    # GenAIComps tests/image2video/test_image2video_native.sh: no num_frames, no steps; the tiny
    # model's own defaults keep it short. The rocket image's URL is a data URI of a local image.
    live = start_service(
        "image2video", "--output-dir", str(tmp_path / "out"), log_dir=tmp_path, cache_dir=cache_dir
    )
    try:
        live.wait_ready()
        rocket = "data:image/png;base64," + base64.b64encode(_png((128, 72), (20, 20, 60))).decode()
        body = '{"images_path":[{"image_path":"' + rocket + '"}]}'
        result = subprocess.run(
            ["curl", "-sS", live.url("/v1/image2video"), "-XPOST", "-d", body,
             "-H", "Content-Type: application/json"],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        assert "generated.mp4" in result.stdout  # the script's check
        path = json.loads(result.stdout)["video_path"]
        with urllib.request.urlopen(live.url(path), timeout=30) as response:
            assert response.headers["Content-Type"] == "video/mp4" and len(response.read()) > 0
    finally:
        live.kill()
