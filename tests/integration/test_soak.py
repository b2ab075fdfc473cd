"""Soak: many requests against one real `opea-media serve` process; memory, threads and files must level off.

The mix is what a long-lived service sees: valid requests of a few sizes, bad input (400),
unknown paths (404), health and metrics scrapes, and clients that hang up in the middle of
inference. After a warm-up (every shape and code path seen once, so caches and thread pools are
full), resident memory, the thread count and the open file descriptors of the process are read
from /proc; at the end they are read again once the clients have gone.

Promises: RSS grows by less than RSS_LIMIT after warm-up; threads and open fds do not grow.

CI runs SOAK_REQUESTS = 100 per service after 40 of warm-up (about 15 s each). The long run
(docs/reliability.md):

    OPEA_MEDIA_SOAK_REQUESTS=2000 python -m pytest tests/integration/test_soak.py -s

prints the figures for each service.
"""

from __future__ import annotations

import asyncio
import base64
import io
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from .live_service import LiveService, start_service

SOAK_REQUESTS = int(os.environ.get("OPEA_MEDIA_SOAK_REQUESTS", "100"))
LONG_RUN = "OPEA_MEDIA_SOAK_REQUESTS" in os.environ
WARMUP_REQUESTS = 40
CONCURRENCY = 4
# The long run holds the target; a short CI run still sees allocator noise of a few MB.
RSS_LIMIT = 0.05 if LONG_RUN else 0.10


def _png_base64(size: tuple[int, int]) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", size, (20, 90, 160)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


IMAGES = [_png_base64((64, 64)), _png_base64((120, 80))]


def _job(service: str, n: int) -> tuple[str, str, dict[str, Any] | None]:
    """The n-th request of the mix: (method, path, JSON body); the mix repeats every 10."""
    kind = n % 10
    path = f"/v1/{service}"
    if kind == 7:
        return "POST", path, {"no_such_field": 1}  # 400
    if kind == 8:
        return "GET", "/no/such/path", None  # 404
    if kind == 9:
        return "GET", "/metrics" if n % 20 == 9 else "/health", None
    size = 64 if kind % 2 else 128
    if service == "text2image":
        body = {"prompt": f"soak {n}", "num_inference_steps": 2 + kind % 3, "height": size, "width": 64}
        if kind == 5:
            body["num_images_per_prompt"] = 2
    else:
        body = {"images_path": [{"image_path": IMAGES[kind % 2]}], "num_frames": 2, "num_inference_steps": 2}
    return "POST", path, body


async def _worker(
    service: LiveService, name: str, numbers: list[int], seen: Counter[str], problems: list[str]
) -> None:
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while numbers:
            n = numbers.pop()
            method, path, body = _job(name, n)
            if n % 50 == 3:  # hang up while the job runs: the service must clean up after it
                try:
                    big = {**(body or {}), "num_inference_steps": 60}
                    response = await asyncio.wait_for(session.post(service.url(path), json=big), 0.3)
                    response.release()
                    seen["answered before hanging up"] += 1
                except TimeoutError:
                    seen["hung up"] += 1
                continue
            async with session.request(method, service.url(path), json=body) as response:
                await response.read()
                seen[str(response.status)] += 1
                expected = {"/health": 200, "/metrics": 200, "/no/such/path": 404}.get(path)
                if expected is None:
                    expected = 400 if body and "no_such_field" in body else 200
                if response.status != expected:
                    problems.append(f"{method} {path} -> {response.status}, expected {expected}")


async def _run(service: LiveService, name: str, numbers: list[int], seen: Counter[str]) -> list[str]:
    problems: list[str] = []
    await asyncio.gather(*(_worker(service, name, numbers, seen, problems) for _ in range(CONCURRENCY)))
    return problems


def _settled_stats(service: LiveService) -> dict[str, int]:
    """Stats once the last interrupted job has ended and idle connections are closed."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        _, health = service.call("/health")
        if health.get("running") == 0 and health.get("queue_depth") == 0:
            break
        time.sleep(0.1)
    time.sleep(0.5)
    return service.process_stats()


@pytest.mark.parametrize("name", ["text2image", "image2video"])
async def test_soak_memory_threads_and_files_level_off(
    name: str, tmp_path: Path, cache_dir: Path, tiny_t2i: Any, tiny_i2v: Any
) -> None:
    service = start_service(name, "--log-level", "warning", log_dir=tmp_path, cache_dir=cache_dir)
    try:
        service.wait_ready()
        seen: Counter[str] = Counter()
        started = time.monotonic()
        assert await _run(service, name, list(range(WARMUP_REQUESTS)), seen) == []
        warm = _settled_stats(service)
        samples = [warm["rss_kb"]]
        numbers = list(range(WARMUP_REQUESTS, WARMUP_REQUESTS + SOAK_REQUESTS))
        rounds = [numbers[i : i + 100] for i in range(0, len(numbers), 100)]
        for chunk in rounds:
            assert await _run(service, name, chunk, seen) == []
            samples.append(service.process_stats()["rss_kb"])
        end = _settled_stats(service)
        seconds = time.monotonic() - started
        growth = (end["rss_kb"] - warm["rss_kb"]) / warm["rss_kb"]
        print(
            f"\nsoak {name}: {WARMUP_REQUESTS} warm-up + {SOAK_REQUESTS} requests in {seconds:.0f} s "
            f"({dict(sorted(seen.items()))}); RSS after warm-up {warm['rss_kb'] / 1024:.1f} MiB, "
            f"at the end {end['rss_kb'] / 1024:.1f} MiB ({growth:+.2%}), max {max(samples) / 1024:.1f} MiB; "
            f"threads {warm['threads']} -> {end['threads']}; open fds {warm['fds']} -> {end['fds']}"
        )
        assert growth < RSS_LIMIT, (warm, end, samples)
        assert end["threads"] <= warm["threads"], (warm, end)
        assert end["fds"] <= warm["fds"], (warm, end)
        assert service.call("/health")[0] == 200
        assert service.stop() == 0
    finally:
        service.kill()
