"""Schema fuzzing: schemathesis against a live `opea-media serve` of each service, on the tiny models.

Every case schemathesis makes from GET /openapi.json (the boundary and mutation cases of its
coverage phase, and FUZZ_EXAMPLES random cases per operation, valid and invalid alike) goes
to a real server process over TCP. Each response must have a documented status, content type,
headers and body; data the document forbids must be refused with a 4xx (negative_data_rejection);
data it allows must be served (positive cases: 200, except an image_path whose content is no image);
no input may produce a 500. Afterwards the server must be healthy and serve a normal request.

Bounded cost, and why it is done this way: the document tells the truth (2048 px, 150 steps, 8
images), and at 2048 px one denoising step of even the tiny model took 60-80 s on 2 shared CPU
cores, and a step cannot be interrupted midway. So the fuzz lowers only the *work* of requests that
are valid: a size, step, image or frame count that is within its limit but above WORK_CAPS is
replaced by the cap, and an absent or null step (or frame) count, which means the model's 25, by 2,
before sending. Invalid values are never touched, so every refusal path is fuzzed as generated. The
server also runs with a short --request-timeout as a backstop (504 is a documented answer). The
defaults themselves are served in tests/test_server_api.py.

CI: FUZZ_EXAMPLES = 25 random cases per operation, derandomized (the same cases every run), plus
the coverage phase (deterministic): with the OpenAI and AUTOMATIC1111 routes, about 1,300
requests over 26 operations for text2image (70-100 s on 2 shared cores) and about 280 for
image2video, whose clips are also written and read back as MP4s (minutes there). The long run
(docs/reliability.md):

    OPEA_MEDIA_FUZZ_EXAMPLES=2000 python -m pytest tests/integration/test_fuzz.py -s

runs random (not derandomized) cases and prints how many requests each service answered.
"""

from __future__ import annotations

import base64
import io
import json
import os
import urllib.request
import zlib
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import positive_data_acceptance

from opea_media.params import IMAGE2VIDEO_RULES, TEXT2IMAGE_RULES
from opea_media.server.config import ServerConfig
from opea_media.server.openapi import openapi_document

from .live_service import LiveService, start_service

FUZZ_EXAMPLES = int(os.environ.get("OPEA_MEDIA_FUZZ_EXAMPLES", "25"))
LONG_RUN = "OPEA_MEDIA_FUZZ_EXAMPLES" in os.environ
# Per operation: each field's cap, and the fields whose absence means the model's 25 steps.
WORK_CAPS: dict[str, dict[str, int]] = {
    "/v1/text2image": {"height": 128, "width": 128, "num_images_per_prompt": 2, "num_inference_steps": 3},
    "/v1/image2video": {"height": 64, "width": 64, "num_frames": 2, "num_inference_steps": 2},
    "/v1/images/generations": {"n": 2, "num_inference_steps": 3},
    "/v1/images/edits": {"n": 2, "num_inference_steps": 3},
    "/sdapi/v1/txt2img": {"height": 128, "width": 128, "batch_size": 2, "n_iter": 1, "steps": 3},
    "/sdapi/v1/img2img": {"height": 128, "width": 128, "batch_size": 2, "n_iter": 1, "steps": 3},
}
DEFAULT_STEPS_FIELDS = {
    "/v1/image2video": ("num_inference_steps", "num_frames"),
    "/sdapi/v1/txt2img": ("steps",),
    "/sdapi/v1/img2img": ("steps",),
}
RULE_OF = {
    "n": "num_images_per_prompt",
    "batch_size": "num_images_per_prompt",
    "n_iter": "num_images_per_prompt",
}
RULE_OF |= {"steps": "num_inference_steps"}
# A valid size string that is larger than this becomes it (the OpenAI routes' `size`).
SIZE_CAP = 128
# Refusals the document can only say in words: an image's content, a size's sides (its pattern
# cannot say "multiple of 8 from 64 to 2048"), a product of two counts, the one model's name.
WORDS_ONLY = (
    "images_path[", "image", "init_images", "mask", "size:", "batch_size:", "n:",
    "sd_model_checkpoint:", "model:",
)  # fmt: skip
REQUEST_TIMEOUT_S = "20"
# No image URL is ever fetched: every URL host but this one (which cannot resolve) is refused
# before any name lookup, so no fuzz case can send the server to another machine.
URL_HOSTS = "fuzz.invalid"

pytestmark = pytest.mark.filterwarnings("ignore")  # schemathesis and hypothesis warn about their own config

STATS: dict[str, Counter[str]] = {"text2image": Counter(), "image2video": Counter()}


def _image_sources() -> list[str]:
    """Real images, in the spellings the API accepts, for positive image2video cases to reach inference."""
    sources = []
    for size, fmt, mode in (((64, 64), "PNG", "RGB"), ((80, 48), "JPEG", "RGB"), ((40, 72), "WEBP", "RGBA")):
        buffer = io.BytesIO()
        Image.new(mode, size, (30, 120, 200, 128)[: len(mode)]).save(buffer, format=fmt)
        text = base64.b64encode(buffer.getvalue()).decode("ascii")
        sources.append(text if fmt == "PNG" else f"data:image/{fmt.lower()};base64,{text}")
    return sources


IMAGES = _image_sources()


def _start(service: str, tmp_path_factory: pytest.TempPathFactory, cache_dir: Path) -> Iterator[LiveService]:
    live = start_service(
        service,
        "--request-timeout",
        REQUEST_TIMEOUT_S,
        "--allowed-url-hosts",
        URL_HOSTS,
        "--log-level",
        "warning",
        # Valid job submits pile up faster than the worker runs them: no 503 for a full queue.
        "--max-queue",
        "10000",
        log_dir=tmp_path_factory.mktemp(f"fuzz-{service}"),
        cache_dir=cache_dir,
    )
    try:
        live.wait_ready()
        yield live
        _assert_healthy_afterwards(live, service)
    finally:
        live.kill()


@pytest.fixture(scope="module")
def t2i_live(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, tiny_t2i: Any
) -> Iterator[LiveService]:
    yield from _start("text2image", tmp_path_factory, cache_dir)


@pytest.fixture(scope="module")
def i2v_live(
    tmp_path_factory: pytest.TempPathFactory, cache_dir: Path, tiny_i2v: Any
) -> Iterator[LiveService]:
    yield from _start("image2video", tmp_path_factory, cache_dir)


def _document(service: str) -> dict[str, Any]:
    """The document the fuzz servers serve, made in-process by the same generator (test_fuzz checks
    that it equals what the live server serves), so cases can be collected before a server runs."""
    config = ServerConfig(
        service=service, request_timeout=float(REQUEST_TIMEOUT_S), allowed_url_hosts=(URL_HOSTS,)
    )  # type: ignore[arg-type]
    return openapi_document(config)


t2i = schemathesis.openapi.from_dict(_document("text2image"))
i2v = schemathesis.openapi.from_dict(_document("image2video"))


def _valid(service: str, name: str, value: Any) -> bool:
    """Whether the server takes this value (an integral float such as 880.0 is the integer 880)."""
    rules = TEXT2IMAGE_RULES if service == "text2image" else IMAGE2VIDEO_RULES
    name = RULE_OF.get(name, name)
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if name not in rules or isinstance(value, bool) or not isinstance(value, int):
        return False
    return rules[name].problem(value) is None


def _small_size(value: Any) -> Any:
    """A valid WxH over SIZE_CAP per side, as SIZE_CAPxSIZE_CAP; anything else as it is."""
    if not isinstance(value, str) or value.count("x") != 1:
        return value
    sides = value.split("x")
    if all(side.isdigit() and _valid("text2image", "width", int(side)) for side in sides):
        return f"{min(SIZE_CAP, int(sides[0]))}x{min(SIZE_CAP, int(sides[1]))}"
    return value


def bound_work(service: str, case: Any) -> None:
    """Lower the work of valid values (see the module docstring); leave every invalid value alone."""
    body = case.body
    path = case.operation.path
    if path == "/v1/jobs":  # a job takes the body of the service's synchronous endpoint
        path = f"/v1/{service}"
    if not isinstance(body, dict) or path not in WORK_CAPS:
        return
    for name, cap in WORK_CAPS[path].items():
        value = body.get(name)
        if _valid(service, name, value) and value > cap:
            body[name] = type(value)(cap)
        elif (
            isinstance(value, str)
            and value.isdigit()
            and _valid(service, name, int(value))
            and int(value) > cap
        ):
            body[name] = str(cap)  # a form's number
    if "size" in body:
        body["size"] = _small_size(body["size"])
    # Absent or null means the model's defaults: 25 steps (and for SVD, 25 frames).
    for name in DEFAULT_STEPS_FIELDS.get(path, ("num_inference_steps",)):
        if body.get(name) is None:
            body[name] = 2
    # A third of the valid cases get real images, to reach inference; the rest keep fuzzed ones.
    if not _positive(case) or zlib.crc32(repr(body).encode()) % 3:
        return
    entries = body.get("images_path")
    if path == "/v1/image2video" and isinstance(entries, list):
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and "image_path" in entry:
                entry["image_path"] = IMAGES[index % len(IMAGES)]
    if path == "/sdapi/v1/img2img" and isinstance(body.get("init_images"), list) and body["init_images"]:
        body["init_images"][0] = IMAGES[0]
    if path == "/v1/images/edits" and "image" in body:
        body["image"] = base64.b64decode(IMAGES[0])


def _positive(case: Any) -> bool:
    return case.meta is not None and not case.meta.generation.mode.is_negative


@schemathesis.check
def no_500_for_client_input(ctx: Any, response: Any, case: Any) -> bool | None:
    """Whatever a client sends, the answer is never 500 (503 and 504 are a busy server's answers)."""
    if response.status_code == 500:
        raise AssertionError(f"500 for client input: {response.text[:300]}")
    return None


@schemathesis.check
def valid_requests_are_served(ctx: Any, response: Any, case: Any) -> bool | None:
    """positive_data_acceptance, except for what the document can only say in words (an image's content)."""
    if case.operation.method.upper() != "POST" or not _positive(case):
        return None
    status = response.status_code
    if status in (200, 202, 504):  # 202: a job; 504: the --request-timeout backstop, counted below
        return None
    if status == 422 and case.operation.path == "/v1/jobs":
        return None  # an Idempotency-Key the fuzz sent before with another body: the documented 422
    detail = response.json().get("detail", "") if status == 400 else ""
    if detail.startswith(WORDS_ONLY):
        return None  # e.g. a fuzzed string that is no image, or a URL host that is not allowed
    raise AssertionError(f"a request the document allows got {status}: {response.text[:300]}")


def _run(service: str, live: LiveService, case: Any) -> None:
    bound_work(service, case)
    response = case.call(base_url=live.base_url, timeout=float(REQUEST_TIMEOUT_S) + 30)
    stats = STATS[service]
    stats["requests"] += 1
    stats[f"{case.method} {case.path} {response.status_code}"] += 1
    stats["seconds waiting"] += response.elapsed  # type: ignore[assignment]
    case.validate_response(
        response,
        excluded_checks=[not_a_server_error, positive_data_acceptance],
        additional_checks=[no_500_for_client_input, valid_requests_are_served],
    )


FUZZ_SETTINGS = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    derandomize=not LONG_RUN,
    suppress_health_check=list(HealthCheck),
    print_blob=True,
)


@t2i.parametrize()
@FUZZ_SETTINGS
def test_fuzz_text2image(case: Any, t2i_live: LiveService) -> None:
    _run("text2image", t2i_live, case)


@i2v.parametrize()
@FUZZ_SETTINGS
def test_fuzz_image2video(case: Any, i2v_live: LiveService) -> None:
    _run("image2video", i2v_live, case)


def _assert_healthy_afterwards(live: LiveService, service: str) -> None:
    """After the fuzz: alive, healthy, no 500 ever counted, and a normal request still served."""
    assert live.process.poll() is None, live.log_path.read_text()[-3000:]
    with urllib.request.urlopen(live.url("/openapi.json"), timeout=30) as response:
        assert json.loads(response.read()) == _document(service)  # what was fuzzed is what it serves
    assert live.call("/health")[0] == 200 and live.call("/health/live")[0] == 200
    statuses = live.requests_by_status(f"/v1/{service}")
    server_errors = {k: v for k, v in live.metrics().items() if 'status="500"' in k and v}
    assert not server_errors, server_errors  # on every route, not only the generate one
    if service == "text2image":
        status, body = live.call("/v1/text2image", {"prompt": "after the fuzz", "num_inference_steps": 2})
    else:
        request = {"images_path": [{"image_path": IMAGES[0]}], "num_frames": 2, "num_inference_steps": 2}
        status, body = live.call("/v1/image2video", request)
    assert status == 200, body
    served = sum(statuses.values())
    stats = STATS[service]
    print(
        f"\nfuzz {service}: {stats['requests']} requests sent by schemathesis "
        f"({FUZZ_EXAMPLES} random cases per operation), POST /v1/{service} answers by status "
        f"(server's count): {dict(sorted(statuses.items()))}, total {served}"
    )
    for key, count in sorted(stats.items()):
        if key != "requests":
            print(f"  {key}: {count}")
