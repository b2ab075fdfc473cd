"""Load against a real `opea-media serve` process: many more clients than queue places, for a bounded time.

Promises: every request ends as 200, or as an explicit 503 (queue full, with Retry-After) or 504
(deadline); none hangs (each has a client timeout far above the server's); none is lost (requests
sent = responses received, and the server's own counters say the same, status by status); the
queue never holds more than --max-queue, and /metrics' queue depth, cancellations and in-progress
gauges agree with what the clients saw. Then SIGTERM with a full queue: everything admitted
completes, new requests get 503, the process exits 0.

CI: LOAD_SECONDS of load from LOAD_CLIENTS clients against --max-queue 4.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .live_service import LiveService, start_service

LOAD_SECONDS = float(os.environ.get("OPEA_MEDIA_LOAD_SECONDS", "12"))
LOAD_CLIENTS = 24
MAX_QUEUE = 4
REQUEST_TIMEOUT = 3.0  # seconds, the server's; slow requests past it give 504s
CLIENT_TIMEOUT = 60.0  # far above it: a client timeout here is a hang


@pytest.fixture
def t2i(tmp_path: Path, cache_dir: Path, tiny_t2i: Any) -> Iterator[LiveService]:
    service = start_service(
        "text2image",
        "--max-queue",
        str(MAX_QUEUE),
        "--request-timeout",
        str(REQUEST_TIMEOUT),
        "--shutdown-grace",
        "60",
        "--log-level",
        "warning",
        log_dir=tmp_path,
        cache_dir=cache_dir,
    )
    try:
        service.wait_ready()
        yield service
    finally:
        service.kill()


def _request(rng: random.Random) -> dict[str, Any]:
    # Mostly quick jobs; one in eight takes long enough to pass the deadline if it waits too.
    steps = 120 if rng.random() < 0.125 else rng.randint(2, 6)
    return {"prompt": f"load {rng.random()}", "num_inference_steps": steps, "seed": rng.randrange(1000)}


async def _client(
    index: int, base_url: str, until: float, seen: Counter[str], problems: list[str], queue_depths: list[int]
) -> None:
    rng = random.Random(index)
    timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while time.monotonic() < until:
            seen["sent"] += 1
            try:
                async with session.post(f"{base_url}/v1/text2image", json=_request(rng)) as response:
                    body = await response.json()
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
            except TimeoutError:
                problems.append("a request hung past the client timeout")
                continue
            except aiohttp.ClientError as err:
                problems.append(f"connection error: {err!r}")
                continue
            seen[str(status)] += 1
            if status == 200:
                if len(body["images"]) != 1:
                    problems.append(f"200 without its image: {str(body)[:200]}")
            elif status in (503, 504):
                if set(body) != {"detail", "status_code"} or body["status_code"] != status:
                    problems.append(f"{status} with body {body}")
                if status == 503:
                    if "queue is full" not in body["detail"] or not retry_after:
                        problems.append(f"503 without Retry-After or not for a full queue: {body}")
                    await asyncio.sleep(0.05)  # a polite client backs off; a tight loop is still load
            else:
                problems.append(f"unexpected {status}: {body}")
        async with session.get(f"{base_url}/health") as response:
            queue_depths.append((await response.json()).get("queue_depth", -1))


async def _watch_queue(service: LiveService, until: float, depths: list[float]) -> None:
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < until:
            async with session.get(service.url("/metrics")) as response:
                text = await response.text()
            for line in text.splitlines():
                if line.startswith("opea_media_queue_depth "):
                    depths.append(float(line.split()[1]))
            await asyncio.sleep(0.1)


async def test_many_clients_get_an_answer_each_and_the_counters_agree(t2i: LiveService) -> None:
    seen: Counter[str] = Counter()
    problems: list[str] = []
    final_depths: list[int] = []
    sampled: list[float] = []
    until = time.monotonic() + LOAD_SECONDS
    clients = [_client(i, t2i.base_url, until, seen, problems, final_depths) for i in range(LOAD_CLIENTS)]
    await asyncio.gather(_watch_queue(t2i, until, sampled), *clients)

    answered = sum(count for key, count in seen.items() if key != "sent")
    print(
        f"\nload: {LOAD_CLIENTS} clients for {LOAD_SECONDS:g} s: {dict(seen)}; queue depth max {max(sampled)}"
    )
    assert problems == []
    assert answered == seen["sent"]  # none lost
    assert seen["200"] > 0 and seen["503"] > 0, seen  # both the served and the refused were seen
    assert set(seen) <= {"sent", "200", "503", "504"}
    assert max(sampled) <= MAX_QUEUE and len(sampled) > 10

    # A job whose client already has its 504 stops at its next denoising step: let it.
    deadline = time.monotonic() + 10
    while (metrics := t2i.metrics())["opea_media_inference_in_progress"] and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    server = t2i.requests_by_status("/v1/text2image")
    assert server == {int(k): v for k, v in seen.items() if k != "sent"}  # the server counted the same
    assert metrics["opea_media_queue_depth"] == 0
    assert metrics["opea_media_http_requests_in_progress"] == 0
    assert metrics["opea_media_inference_in_progress"] == 0
    assert metrics.get('opea_media_jobs_cancelled_total{reason="deadline"}', 0) == seen["504"]
    # Every admitted job ran or was dropped at its deadline: 200s plus the 504s.
    started = metrics["opea_media_queue_wait_seconds_count"]
    assert seen["200"] <= started <= seen["200"] + seen["504"]
    assert t2i.call("/health")[0] == 200 and t2i.process.poll() is None


async def test_sigterm_with_a_full_queue_lets_every_admitted_request_finish(
    tmp_path: Path, cache_dir: Path, tiny_t2i: Any
) -> None:
    service = start_service(
        "text2image", "--max-queue", "16", "--shutdown-grace", "60", log_dir=tmp_path, cache_dir=cache_dir
    )
    try:
        service.wait_ready()
        timeout = aiohttp.ClientTimeout(total=CLIENT_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:

            async def generate(prompt: str, steps: int) -> tuple[int, dict[str, Any]]:
                body = {"prompt": prompt, "num_inference_steps": steps}
                async with session.post(service.url("/v1/text2image"), json=body) as response:
                    return response.status, await response.json()

            admitted = [asyncio.create_task(generate(f"admitted {i}", 30)) for i in range(8)]
            while True:  # one running, seven queued
                _, health = await asyncio.to_thread(service.call, "/health")
                if health.get("running", 0) + health.get("queue_depth", 0) == 8:
                    break
                await asyncio.sleep(0.05)
            service.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            late_status, late = await generate("late", 2)
            assert late_status == 503 and "shutting down" in late["detail"]
            results = await asyncio.gather(*admitted)
        assert [status for status, _ in results] == [200] * 8
        assert await asyncio.to_thread(service.process.wait, 60) == 0
        messages = [line["message"] for line in service.log_lines()]
        assert "drained: every request in progress has its answer" in messages
    finally:
        service.kill()
