"""Faults inside the service: inference errors, out of memory, a worker thread that dies.

Failures are injected where they really happen: in the tiny models' UNet (so the models layer's
own failure mapping runs), or into the worker thread itself. A broken model folder is tested with a
real process in tests/integration/test_serve_faults.py; SIGTERM in test_serve_subprocess.py and
test_load.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import torch
from aiohttp.test_utils import TestClient
from server_support import GatedText2Image, assert_error, b64, fake_handle, png_bytes, until

from opea_media.server.keys import WORKER

FAST_T2I = {"prompt": "a cat", "num_inference_steps": 2}
FAST_I2V = {"images_path": [{"image_path": b64(png_bytes())}], "num_frames": 2, "num_inference_steps": 2}


class _Failing:
    """A UNet forward that raises `error` on its next `times` calls, then runs the real one."""

    def __init__(self, real: Callable[..., Any], error: BaseException, times: int = 1) -> None:
        self.real, self.error, self.left = real, error, times

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.left > 0:
            self.left -= 1
            raise self.error
        return self.real(*args, **kwargs)


@pytest.fixture
def break_unet(monkeypatch: pytest.MonkeyPatch) -> Callable[[Any, BaseException], None]:
    """Make the loaded model's UNet raise once; monkeypatch puts the real forward back afterwards."""

    def inject(handle: Any, error: BaseException) -> None:
        unet = handle.load().pipe.unet
        monkeypatch.setattr(unet, "forward", _Failing(unet.forward, error))

    return inject


def _worker(client: TestClient) -> Any:
    assert client.app is not None
    return client.app[WORKER]


# --- inference errors and out of memory, through the real models ------------------------------------


_OOM = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
INFERENCE_ERRORS = [
    (
        "text2image",
        RuntimeError("CUDA error: illegal memory access at /opt/secret/kernel.cu:42"),
        "(RuntimeError)",
    ),
    ("text2image", ValueError("shapes do not match"), "inference failed (ValueError)"),
    ("text2image", _OOM, "out of memory during inference"),
    ("text2image", MemoryError(), "out of memory during inference"),
    ("image2video", _OOM, "out of memory during inference"),
    ("image2video", RuntimeError("cuDNN error at /opt/secret/conv.cpp"), "inference failed (RuntimeError)"),
]


@pytest.mark.parametrize(("service", "error", "fragment"), INFERENCE_ERRORS)
async def test_an_inference_error_is_one_500_and_the_next_request_is_served(
    server_client: Any,
    server_tiny_t2i: Any,
    server_tiny_i2v: Any,
    break_unet: Callable[[Any, BaseException], None],
    service: str,
    error: BaseException,
    fragment: str,
) -> None:
    handle, request = (server_tiny_t2i, FAST_T2I) if service == "text2image" else (server_tiny_i2v, FAST_I2V)
    client = await server_client(handle, service=service)
    break_unet(handle, error)
    path = f"/v1/{service}"
    body = await assert_error(await client.post(path, json=request), 500, fragment)
    assert "secret" not in body["detail"] and "GiB" not in body["detail"]  # the log has those, not the client
    assert (await client.post(path, json=request)).status == 200
    assert (await client.get("/health")).status == 200


@pytest.mark.parametrize(
    ("error", "fragment"),
    [
        (MemoryError(), "out of memory during inference"),
        (
            type("OutOfMemoryError", (RuntimeError,), {})("no memory on the device"),
            "out of memory during inference",
        ),
        (SystemExit(3), "inference failed unexpectedly (SystemExit)"),
        (KeyboardInterrupt(), "inference failed unexpectedly (KeyboardInterrupt)"),
        (type("Boom", (BaseException,), {})(), "inference failed unexpectedly (Boom)"),
    ],
)
async def test_errors_raised_outside_the_pipeline_call_are_500_too(
    server_client: Any, error: BaseException, fragment: str
) -> None:
    model = GatedText2Image(fail=error)
    model.gate.set()
    client = await server_client(fake_handle(model))
    await assert_error(await client.post("/v1/text2image", json={"prompt": "x"}), 500, fragment)
    model.fail = None
    assert (await client.post("/v1/text2image", json={"prompt": "x"})).status == 200
    assert _worker(client).alive


async def test_a_model_that_returns_too_few_results_is_a_500_not_a_dead_worker(server_client: Any) -> None:
    class Short(GatedText2Image):
        def generate(self, batch: Any, *, on_step: Any) -> Any:
            return super().generate(batch, on_step=on_step)[:-1]

    model = Short()
    model.gate.set()
    client = await server_client(fake_handle(model))
    await assert_error(
        await client.post("/v1/text2image", json={"prompt": "x"}), 500, "the model returned 0 results for 1"
    )
    assert _worker(client).alive


# --- the worker thread dies ------------------------------------------------------------------------


def _raise_in_thread(thread: threading.Thread, error: type[BaseException]) -> None:
    """Raise `error` inside another thread at its next bytecode, as an outside kill would."""
    assert thread.ident is not None
    done = ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread.ident), ctypes.py_object(error))
    assert done == 1


@pytest.fixture
def quiet_worker_death(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.CRITICAL, logger="opea_media.server.worker")
    yield caplog


async def _assert_dead(client: TestClient, fragment: str) -> None:
    health = await client.get("/health")
    body = await health.json()
    assert health.status == 503 and body["status"] == "failed" and fragment in body["detail"], body
    assert "restart the service" in body["detail"]
    live = await client.get("/health/live")
    assert live.status == 503 and (await live.json())["status"] == "failed"
    # New requests are refused at once, not queued behind a worker that will never come.
    refused = await asyncio.wait_for(client.post("/v1/text2image", json={"prompt": "late"}), 2)
    await assert_error(refused, 503, "the inference worker stopped unexpectedly")
    metrics = await (await client.get("/metrics")).text()
    assert "opea_media_model_ready 0.0" in metrics and "opea_media_queue_depth 0.0" in metrics


async def test_a_worker_killed_while_idle_turns_unhealthy_and_answers_waiting_requests(
    server_client: Any, quiet_worker_death: pytest.LogCaptureFixture
) -> None:
    model = GatedText2Image()
    model.gate.set()
    client = await server_client(fake_handle(model))
    worker = _worker(client)
    _raise_in_thread(worker._thread, SystemExit)  # delivered when the thread next wakes up
    # This request wakes the worker, which dies at once: the request must get an answer.
    waiting = await asyncio.wait_for(client.post("/v1/text2image", json={"prompt": "x"}), 10)
    await assert_error(waiting, 503, "the inference worker stopped unexpectedly while serving (SystemExit)")
    await until(lambda: not worker._thread.is_alive())
    await _assert_dead(client, "(SystemExit)")
    assert any("the inference worker died" in r.getMessage() for r in quiet_worker_death.records)


async def test_a_worker_killed_inside_the_model_fails_that_request_and_keeps_serving(
    server_client: Any,
) -> None:
    model = GatedText2Image()
    client = await server_client(fake_handle(model))
    worker = _worker(client)
    running = asyncio.create_task(client.post("/v1/text2image", json={"prompt": "running"}))
    await until(model.running.is_set)
    _raise_in_thread(worker._thread, SystemExit)  # lands inside the model's call
    await assert_error(await asyncio.wait_for(running, 10), 500, "inference failed unexpectedly (SystemExit)")
    model.gate.set()
    assert (await client.post("/v1/text2image", json={"prompt": "next"})).status == 200
    assert worker.alive and (await client.get("/health")).status == 200


async def test_a_bug_in_the_worker_loop_fails_running_and_queued_jobs_instead_of_hanging(
    server_client: Any, monkeypatch: pytest.MonkeyPatch, quiet_worker_death: pytest.LogCaptureFixture
) -> None:
    model = GatedText2Image()
    client = await server_client(fake_handle(model), request_timeout=300)
    worker = _worker(client)

    def broken_deliver(*args: Any, **kwargs: Any) -> None:
        raise AttributeError("a bug in the worker's own code")

    monkeypatch.setattr(worker._outcomes, "deliver", broken_deliver)
    running = asyncio.create_task(client.post("/v1/text2image", json={"prompt": "running"}))
    await until(model.running.is_set)
    queued = asyncio.create_task(client.post("/v1/text2image", json={"prompt": "queued"}))
    await until(lambda: worker.queue_depth == 1)
    model.gate.set()  # the batch finishes; delivering it kills the thread
    # Both answered within seconds, far inside the 300 s request timeout.
    await assert_error(await asyncio.wait_for(running, 10), 500, "this request was running")
    await assert_error(
        await asyncio.wait_for(queued, 10), 503, "stopped unexpectedly while serving (AttributeError)"
    )
    await _assert_dead(client, "(AttributeError)")


async def test_a_worker_that_dies_while_loading_reports_it_instead_of_loading_forever(
    server_client: Any, quiet_worker_death: pytest.LogCaptureFixture
) -> None:
    # KeyboardInterrupt: what a library's import might raise; not an Exception.
    client = await server_client(
        fake_handle(GatedText2Image(), load_error=KeyboardInterrupt()), wait_ready=False
    )
    await until(lambda: not _worker(client).alive)
    health = await client.get("/health")
    body = await health.json()
    assert health.status == 503 and body["status"] == "failed"
    assert "while loading the model (KeyboardInterrupt)" in body["detail"]
    assert "Retry-After" not in health.headers
