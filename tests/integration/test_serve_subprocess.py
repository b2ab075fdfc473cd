"""`opea-media serve` as a real process: both services on free ports, SIGTERM draining, JSON logs."""

from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from .live_service import STARTUP_TIMEOUT, command, free_port


@dataclass
class Service:
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def call(
        self, path: str, body: dict[str, Any] | None = None, timeout: float = 120
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url(path), data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the service exited early:\n{self.log_path.read_text()}"
            try:
                status, body = self.call("/health", timeout=5)
                if status == 200:
                    return
                assert body["status"] == "loading", body
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within {STARTUP_TIMEOUT} s:\n{self.log_path.read_text()}")

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def log_lines(self) -> list[dict[str, Any]]:
        """Every line the process wrote, each parsed as JSON (a line that is not fails the test)."""
        lines = [line for line in self.log_path.read_text().splitlines() if line.strip()]
        parsed = []
        for line in lines:
            try:
                parsed.append(json.loads(line))
            except ValueError:
                raise AssertionError(f"not a JSON log line: {line!r}") from None
        return parsed


@pytest.fixture
def serve(tmp_path: Path, cache_dir: Path, tiny_t2i: Any, tiny_i2v: Any) -> Iterator[Any]:
    """Start services (the tiny models are already built into the session cache); kill leftovers."""
    started: list[Service] = []

    def start(service: str, *extra: str) -> Service:
        port = free_port()
        log_path = tmp_path / f"{service}-{port}.log"
        env = {
            **os.environ,
            "OPEA_MEDIA_CACHE": str(cache_dir),
            "HF_HUB_OFFLINE": "1",
            "OPEA_MEDIA_LOG_LEVEL": "debug",
        }
        args = [*command(), "serve", "--service", service, "--model", "tiny", "--device", "cpu"]
        args += ["--host", "127.0.0.1", "--port", str(port), "--data-dir", str(tmp_path / f"data-{port}"), *extra]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
        started.append(Service(process, port, log_path))
        return started[-1]

    yield start
    for service in started:
        if service.process.poll() is None:
            service.process.kill()
            service.process.wait(10)


def decode_pngs(texts: list[str]) -> list[Image.Image]:
    images = []
    for text in texts:
        image = Image.open(io.BytesIO(base64.b64decode(text, validate=True)))
        assert image.format == "PNG"
        image.load()
        images.append(image)
    return images


def png_base64(size: tuple[int, int] = (96, 64)) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (30, 120, 200)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def test_both_services_answer_and_exit_cleanly(serve: Any) -> None:
    t2i, i2v = serve("text2image"), serve("image2video")
    t2i.wait_ready()
    i2v.wait_ready()

    status, body = t2i.call(
        "/v1/text2image", {"prompt": "a red fox", "num_images_per_prompt": 2, "num_inference_steps": 2}
    )
    assert status == 200, body
    assert [image.size for image in decode_pngs(body["images"])] == [(64, 64), (64, 64)]

    request = {
        "images_path": [
            {"image_path": png_base64()},
            {"image_path": "data:image/png;base64," + png_base64((64, 64))},
        ],
        "num_frames": 3,
        "num_inference_steps": 2,
    }
    status, body = i2v.call("/v1/image2video", request)
    assert status == 200, body
    assert body["frames_per_clip"] == [3, 3] and len(decode_pngs(body["frames"])) == 6

    status, body = t2i.call("/v1/image2video", request)
    assert (status, body["status_code"]) == (404, 404)

    assert t2i.stop() == 0 and i2v.stop() == 0
    for service in (t2i, i2v):
        lines = service.log_lines()
        assert all(line["time"].endswith("Z") and line["level"] and line["message"] for line in lines)
        messages = [line["message"] for line in lines]
        assert messages.count("loading the model") == 1 and messages.count("model ready") == 1
        assert "stopped" in messages
        access = [
            line for line in lines if line["logger"] == "opea_media.access" and line["method"] == "POST"
        ]
        assert access and all(line["request_id"] and line["duration_ms"] >= 0 for line in access)


def test_sigterm_stops_admitting_and_lets_the_request_in_progress_finish(serve: Any) -> None:
    service = serve("text2image", "--shutdown-grace", "60")
    service.wait_ready()
    result: dict[str, Any] = {}

    def slow_request() -> None:
        result["answer"] = service.call("/v1/text2image", {"prompt": "slow", "num_inference_steps": 150})

    client = threading.Thread(target=slow_request)
    client.start()
    deadline = time.monotonic() + 30
    while service.call("/health")[1].get("running", 0) == 0:
        assert time.monotonic() < deadline and client.is_alive(), "the request never started running"
        time.sleep(0.02)

    service.process.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    refused = service.call("/v1/text2image", {"prompt": "late", "num_inference_steps": 2})
    assert refused[0] == 503 and "shutting down" in refused[1]["detail"], refused
    assert service.call("/health")[1]["status"] == "draining"

    client.join(120)
    status, body = result["answer"]
    assert status == 200 and len(decode_pngs(body["images"])) == 1
    assert service.process.wait(30) == 0
    messages = [line["message"] for line in service.log_lines()]
    assert "SIGTERM: no longer admitting requests; draining for up to 60 s" in messages
    assert "drained: every request in progress has its answer" in messages


def test_past_the_grace_period_the_running_request_gets_a_503(serve: Any) -> None:
    service = serve("text2image", "--shutdown-grace", "0.5")
    service.wait_ready()
    result: dict[str, Any] = {}

    def slow_request() -> None:
        result["answer"] = service.call("/v1/text2image", {"prompt": "slow", "num_inference_steps": 150})

    client = threading.Thread(target=slow_request)
    client.start()
    deadline = time.monotonic() + 30
    while service.call("/health")[1].get("running", 0) == 0:
        assert time.monotonic() < deadline and client.is_alive(), "the request never started running"
        time.sleep(0.02)
    service.process.send_signal(signal.SIGTERM)
    client.join(60)
    status, body = result["answer"]
    assert (status, body["status_code"]) == (503, 503) and "shut down before this request finished" in body[
        "detail"
    ]
    assert service.process.wait(30) == 0
    messages = [line["message"] for line in service.log_lines()]
    assert "job interrupted (shutdown)" in messages


def test_a_taken_port_fails_at_once_with_one_json_line(serve: Any) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        service = serve("text2image", "--port", str(taken.getsockname()[1]))
        # The later --port wins over the fixture's free port; no model load is waited for.
        assert service.process.wait(30) == 1
    [line] = service.log_lines()[-1:]
    assert line["level"] == "critical" and "cannot listen on" in line["message"]
