"""Concurrent clients against `opea-media serve`: throughput, latency percentiles, /health while busy.

Each configuration runs against its own `serve` subprocess (the clients stay out of its GIL).
With micro-batching compared, both services (--max-batch-size 1 and N) are started side by side
and the runs alternate between them, so load on the machine drifts over both alike.
"""

from __future__ import annotations

import asyncio
import base64
import io
import time
from typing import Any

from .service import ServeProcess
from .stats import Sample

HEALTH_INTERVAL = 0.05


def _png_base64(size: tuple[int, int] = (64, 64)) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.effect_noise(size, 50).convert("RGB").save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


async def _load(url: str, path: str, body: dict[str, Any], *, clients: int, requests: int) -> dict[str, Any]:
    """`clients` closed-loop clients share `requests` requests; /health is polled meanwhile."""
    import aiohttp

    latencies = Sample("latency")
    health = Sample("health")
    remaining = requests
    failures: dict[int, int] = {}
    busy = True

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=3600)) as session:

        async def client(k: int) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                start = time.perf_counter()
                async with session.post(url + path, json={**body, "seed": k}) as response:
                    await response.read()
                    if response.status != 200:
                        failures[response.status] = failures.get(response.status, 0) + 1
                latencies.values.append(time.perf_counter() - start)

        async def poll_health() -> None:
            # Its own connection: /health must not queue behind a client's keep-alive socket.
            async with aiohttp.ClientSession() as probe:
                while busy:
                    start = time.perf_counter()
                    async with probe.get(url + "/health") as response:
                        await response.read()
                    health.values.append(time.perf_counter() - start)
                    await asyncio.sleep(HEALTH_INTERVAL)

        poller = asyncio.create_task(poll_health())
        started = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - started
        busy = False
        await poller
    return {
        "clients": clients,
        "requests": len(latencies.values),
        "failures": failures,
        "rps": len(latencies.values) / wall,
        "p50": latencies.quantile(0.50),
        "p95": latencies.quantile(0.95),
        "p99": latencies.quantile(0.99),
        "health_p99_ms": health.quantile(0.99) * 1000,
        "health_max_ms": max(health.values, default=float("nan")) * 1000,
        "health_n": len(health.values),
    }


def run(
    *,
    service: str,
    model: str,
    body: dict[str, Any],
    batch_sizes: tuple[int, ...],
    concurrency: tuple[int, ...],
    requests_per_level: dict[int, int],
    rounds: int = 1,
    extra_args: tuple[str, ...] = (),
) -> dict[str, Any]:
    path = "/v1/text2image" if service == "text2image" else "/v1/image2video"
    if service == "image2video":
        body = {"images_path": [{"image_path": _png_base64()}], **body}
    servers = {
        # A batch of b requests as one pipeline call, whatever the device's default cap.
        b: ServeProcess(
            service,
            model,
            "--max-batch-size",
            str(b),
            "--max-queue",
            "64",
            *extra_args,
            env={"OPEA_MEDIA_IMAGES_PER_CALL": str(b)},
        )
        for b in batch_sizes
    }
    rows: list[dict[str, Any]] = []
    try:
        for server in servers.values():
            server.wait_ready()
        for server in servers.values():  # one warm-up request each
            asyncio.run(_load(server.url, path, body, clients=1, requests=1))
        for r in range(rounds):
            for c in concurrency:
                order = list(servers.items()) if r % 2 == 0 else list(servers.items())[::-1]
                for b, server in order:
                    result = asyncio.run(
                        _load(server.url, path, body, clients=c, requests=requests_per_level[c])
                    )
                    rows.append({"max_batch_size": b, "round": r, **result})
        peaks = {b: server.peak_rss_mib() for b, server in servers.items()}
    finally:
        for server in servers.values():
            server.stop()
    return {
        "service": service,
        "model": model,
        "body": body_summary(body),
        "rows": rows,
        "peak_rss_mib": peaks,
    }


def body_summary(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "images_path"}
