"""Helpers for the tests of the HTTP service: error-body checks, image codecs, fakes for the worker."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import io
import threading
import time
from collections.abc import Callable
from typing import Any

from PIL import Image

from opea_media.config import Task
from opea_media.errors import Cancelled
from opea_media.models.handle import ModelHandle
from opea_media.params import Image2VideoParams, Text2ImageParams

# OPEA's request types as GenAIComps declares them (comps/cores/proto/docarray.py), field for field.
OPEA_SDINPUTS_FIELDS = (
    "prompt",
    "num_inference_steps",
    "guidance_scale",
    "num_images_per_prompt",
    "seed",
    "negative_prompt",
    "height",
    "width",
    "lora_weight_name_or_path",
)
OPEA_IMAGE_PATH_FIELDS = ("image_path",)
# Our image2video body: OPEA's ImagesPath plus the parameters of diffusers' SVD pipeline call.
IMAGE2VIDEO_FIELDS = (
    "images_path",
    "num_frames",
    "fps",
    "motion_bucket_id",
    "noise_aug_strength",
    "decode_chunk_size",
    "num_inference_steps",
    "seed",
    "height",
    "width",
)


def parse_text2image(body: Any) -> Text2ImageParams:
    from opea_media.server.validation import validate
    from opea_media.server.wire import Text2ImageRequest

    return validate(Text2ImageRequest, body).params()


def parse_image2video(body: Any) -> tuple[list[str], Image2VideoParams]:
    from opea_media.server.validation import validate
    from opea_media.server.wire import Image2VideoRequest

    request = validate(Image2VideoRequest, body)
    return request.sources(), request.params()


def png_bytes(
    size: tuple[int, int] = (80, 64), color: tuple[int, int, int] = (200, 40, 40), mode: str = "RGB"
) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, color if mode == "RGB" else color + (128,)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def decode_png(text: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
    assert image.format == "PNG"
    image.load()
    return image


async def assert_error(response: Any, status: int, fragment: str = "") -> dict[str, Any]:
    """The spec's error body with the response's own status, and a request id to find it in the log."""
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"detail", "status_code"} and body["status_code"] == status
    assert fragment in body["detail"], body["detail"]
    assert "Traceback" not in body["detail"]
    assert response.headers["X-Request-ID"]
    return body


class GatedText2Image:
    """A text2image model that runs until its gate opens, reporting a step every 10 ms."""

    def __init__(self, *, fail: Exception | None = None, report_steps: bool = True) -> None:
        self.gate = threading.Event()
        self.running = threading.Event()
        self.calls: list[list[str]] = []
        self.interrupted: list[list[str]] = []
        self.fail = fail
        self.report_steps = report_steps  # False: one endless step, deaf to cancellation until the gate

    def complete(self, params: Text2ImageParams) -> Text2ImageParams:
        return dataclasses.replace(params, height=params.height or 64, width=params.width or 64)

    def generate(
        self, batch: list[Text2ImageParams], *, on_step: Callable[[int, int], None]
    ) -> list[list[Image.Image]]:
        prompts = [p.prompt for p in batch]
        self.calls.append(prompts)
        self.running.set()
        step = 0
        while not self.gate.wait(0.01):
            if not self.report_steps:
                continue
            step += 1
            try:
                on_step(step, 10_000)
            except Cancelled:
                self.interrupted.append(prompts)
                raise
        if self.fail is not None:
            raise self.fail
        return [[Image.new("RGB", (p.width or 64, p.height or 64), (i, 0, 0))] for i, p in enumerate(batch)]


def fake_handle(
    model: Any,
    *,
    task: Task = "text2image",
    gate: threading.Event | None = None,
    load_error: BaseException | None = None,
) -> ModelHandle[Any]:
    """A real ModelHandle whose loader hands over `model` (after `gate` opens) or raises `load_error`."""

    def load() -> Any:
        if gate is not None:
            assert gate.wait(30)
        if load_error is not None:
            raise load_error
        return model

    return ModelHandle(task, "fake", load)


async def until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- a network guard: no test traffic leaves this machine ---------------------------------------


@dataclasses.dataclass
class NetworkGuard:
    """What the guarded code looked up and connected to (every connect went to loopback)."""

    lookups: list[str] = dataclasses.field(default_factory=list)
    connects: list[tuple[str, int]] = dataclasses.field(default_factory=list)


def guard_network(monkeypatch: Any, fake_dns: dict[str, list[str]]) -> NetworkGuard:
    """Answer name lookups from `fake_dns` only (numeric hosts as themselves) and fail any connect
    to an address that is not loopback, as tests/test_fetch.py does: a refusal that should happen
    before connecting is then proven to, and nothing is ever sent to another machine."""
    import ipaddress
    import socket

    guard = NetworkGuard()
    real_getaddrinfo = socket.getaddrinfo
    real_connect = socket.socket.connect

    def fake_getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):  # type: ignore[no-untyped-def]
        name = host.decode() if isinstance(host, bytes) else host
        guard.lookups.append(name)
        answers = fake_dns.get((name or "").rstrip(".").lower())
        if answers is None:
            return real_getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
        results = []
        for answer in answers:
            v6 = ":" in answer
            sockaddr = (answer, port or 0, 0, 0) if v6 else (answer, port or 0)
            results.append(
                (
                    socket.AF_INET6 if v6 else socket.AF_INET,
                    socket.SOCK_STREAM,
                    socket.IPPROTO_TCP,
                    "",
                    sockaddr,
                )
            )
        return results

    def guarded_connect(sock: socket.socket, address):  # type: ignore[no-untyped-def]
        host = address[0] if isinstance(address, tuple) else str(address)
        guard.connects.append((host, address[1] if isinstance(address, tuple) else 0))
        if not ipaddress.ip_address(host.split("%")[0]).is_loopback:
            raise AssertionError(f"the test tried to connect to {address!r}")
        return real_connect(sock, address)

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    return guard
