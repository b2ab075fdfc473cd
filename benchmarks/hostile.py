"""Hostile clients against a real `opea-media serve --service image2video --model tiny` (loopback):
`python -m benchmarks.hostile [--clients 40] [--stalled 300] [--env NAME=VALUE] [--serve-arg=ARG]`.

flood: `--clients` uploads of a body at the size limit (a noise PNG as base64, padded with JSON
whitespace) to /v1/image2video at once; prints their statuses (or "dropped": the connection ended
without an answer), /health p50/p99 meanwhile, and the process's resident memory before, at its
peak and 30 s after the last answer.
stalled: `--stalled` connections each send half a body and stall; prints how many the service
still holds open just after its body timeout (30 s unless --serve-arg says otherwise).
docs/reliability.md records the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import http.client
import io
import json
import multiprocessing
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from .service import ServeProcess
from .stats import Sample

MIB = 1024 * 1024
HEALTH_INTERVAL = 0.02
RSS_INTERVAL = 0.05
SETTLE_SECONDS = 30.0
REST_SECONDS = 5.0
CLIENT_TIMEOUT = 600.0
UPLOAD_PIECE = 256 * 1024


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def flood_body(size: int) -> bytes:
    """A JSON body of exactly `size` bytes that the service must read, parse, decode and fit."""
    import numpy as np
    from PIL import Image

    # About 19 MiB of noise PNG (under the 20 MiB image limit): base64 makes it about 25 MiB.
    pixels = np.random.default_rng(0).integers(0, 256, (2600, 2500, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=0)
    image = base64.b64encode(buffer.getvalue()).decode("ascii")
    body = json.dumps(
        {
            "images_path": [{"image_path": image}],
            "num_frames": 2,
            "num_inference_steps": 1,
            "height": 64,
            "width": 64,
        }
    ).encode()
    if len(body) > size:
        raise ValueError(f"the image alone is {len(body)} bytes, over {size}")
    return body[:-1] + b" " * (size - len(body)) + b"}"


def head(path: str, port: int, length: int) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def read_status(reader: asyncio.StreamReader) -> int:
    """The status of the one answer on this connection, its body read; 0 if none came."""
    try:
        header = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError):
        return 0
    lines = header.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next(
        (int(v) for k, _, v in (x.partition(":") for x in lines[1:]) if k.lower() == "content-length"), 0
    )
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
        await reader.readexactly(length)
    return status


async def upload(port: int, body: bytes) -> int | str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(head("/v1/image2video", port, len(body)))
        # Answered (and closed) before the whole body went: the answer may still be there.
        with contextlib.suppress(ConnectionError):
            # In pieces: one 32 MiB write makes asyncio shift its buffer after every send, which
            # costs this process (and the machine the service shares) seconds of CPU.
            for at in range(0, len(body), UPLOAD_PIECE):
                writer.write(body[at : at + UPLOAD_PIECE])
                await writer.drain()
        status = await asyncio.wait_for(read_status(reader), CLIENT_TIMEOUT)
        return status or "dropped"
    except ConnectionError:
        return "dropped"
    finally:
        writer.close()


def probe_health(port: int, stop: Any, results: Any) -> None:
    """GET /health on one keep-alive connection every HEALTH_INTERVAL until `stop` is set; sends
    ([(time.time() sent, latency in ms)], errors). A process of its own: the uploads' CPU must not
    delay it."""
    latencies: list[tuple[float, float]] = []
    errors = 0
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    while not stop.is_set():
        sent, started = time.time(), time.perf_counter()
        try:
            connection.request("GET", "/health")
            connection.getresponse().read()
            latencies.append((sent, (time.perf_counter() - started) * 1000))
        except (OSError, http.client.HTTPException):
            errors += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        time.sleep(HEALTH_INTERVAL)
    connection.close()
    results.put((latencies, errors))


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.peak = 0.0
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            self.peak = max(self.peak, rss_mib(self.pid))
            time.sleep(RSS_INTERVAL)


def flood(server: ServeProcess, clients: int, body_bytes: int) -> dict[str, Any]:
    body = flood_body(body_bytes)
    pid = server.process.pid
    before = rss_mib(pid)
    context = multiprocessing.get_context("spawn")
    stop, results = context.Event(), context.Queue()
    prober = context.Process(target=probe_health, args=(server.port, stop, results))
    sampler = RssSampler(pid)
    prober.start()
    sampler.start()
    time.sleep(REST_SECONDS)  # /health at rest first: the machine's own noise, for comparison

    async def all_uploads() -> list[int | str]:
        return list(await asyncio.gather(*(upload(server.port, body) for _ in range(clients))))

    flood_began, started = time.time(), time.perf_counter()
    statuses = asyncio.run(all_uploads())
    seconds = time.perf_counter() - started
    stop.set()
    health, health_errors = results.get(timeout=60)
    prober.join()
    time.sleep(SETTLE_SECONDS)
    sampler.stopping.set()
    sampler.join()
    rest = Sample("rest", [ms for sent, ms in health if sent < flood_began], unit="ms")
    latency = Sample("health", [ms for sent, ms in health if sent >= flood_began], unit="ms")
    return {
        "clients": clients,
        "body_mib": round(len(body) / MIB, 2),
        "statuses": dict(sorted(Counter(map(str, statuses)).items())),
        "seconds": round(seconds, 1),
        "health_at_rest_ms": {"p50": round(rest.quantile(0.5), 1), "p99": round(rest.quantile(0.99), 1)},
        "health_ms": {
            "n": len(latency.values),
            "p50": round(latency.quantile(0.5), 1),
            "p99": round(latency.quantile(0.99), 1),
            "max": round(max(latency.values, default=float("nan")), 1),
            "errors": health_errors,
        },
        "rss_mib": {
            "before": round(before, 0),
            "peak": round(sampler.peak, 0),
            f"after_{SETTLE_SECONDS:g}s": round(rss_mib(pid), 0),
        },
    }


async def _stalled(port: int, connections: int, wait: float) -> dict[str, Any]:
    length = 200_000
    closed_at: list[float] = []
    statuses: Counter[str] = Counter()

    async def stall() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head("/v1/image2video", port, length) + b"{" + b" " * (length // 2))
        await writer.drain()
        status = await read_status(reader)
        statuses[str(status or "none")] += 1
        if status:
            await reader.read()  # then the server's close (or nothing, if it keeps it open)
        closed_at.append(time.perf_counter() - started)
        writer.close()

    started = time.perf_counter()
    tasks = [asyncio.ensure_future(stall()) for _ in range(connections)]
    await asyncio.sleep(wait)
    still_open = sum(not task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {
        "connections": connections,
        "checked_after_s": wait,
        "still_open": still_open,
        "answers": dict(sorted(statuses.items())),
        "closed_after_s": {
            "first": round(min(closed_at), 1) if closed_at else None,
            "last": round(max(closed_at), 1) if closed_at else None,
        },
    }


def stalled(server: ServeProcess, connections: int, wait: float) -> dict[str, Any]:
    return asyncio.run(_stalled(server.port, connections, wait))


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.hostile", description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=40, help="flood: uploads at once")
    p.add_argument("--max-body-mib", type=int, default=32, help="the service's --max-body-mib")
    p.add_argument("--stalled", type=int, default=300, help="stalled: connections")
    p.add_argument(
        "--body-timeout", type=float, default=30.0, help="the service's body timeout, for the check"
    )
    p.add_argument("--only", nargs="+", choices=("flood", "stalled"), default=["flood", "stalled"])
    p.add_argument("--env", action="append", default=[], metavar="NAME=VALUE", help="for the service")
    p.add_argument("--serve-arg", action="append", default=[], metavar="ARG", help="more serve flags")
    p.add_argument("--out", type=Path, default=None, help="also write the figures here (JSON)")
    p.add_argument("--source", type=Path, default=None, help="serve this checkout's opea_media instead")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    env = dict(item.split("=", 1) for item in args.env)
    serve_args = ["--max-body-mib", str(args.max_body_mib), *args.serve_arg]
    results: dict[str, Any] = {"env": env, "serve_args": serve_args}
    # Another checkout (e.g. `git archive main`), to measure before and after with one client.
    launcher = None
    if args.source:
        start = (
            f"import sys; sys.path.insert(0, {str(args.source)!r}); from opea_media.cli import main; main()"
        )
        launcher = [sys.executable, "-c", start]
    with ServeProcess("image2video", "tiny", *serve_args, env=env, launcher=launcher) as server:
        server.wait_ready(timeout=300)
        if "flood" in args.only:
            # The limit less a little: "at the limit", whichever side of it the service counts.
            results["flood"] = flood(server, args.clients, args.max_body_mib * MIB - 1024)
            print("flood:", json.dumps(results["flood"]), flush=True)
        if "stalled" in args.only:
            results["stalled"] = stalled(server, args.stalled, args.body_timeout + 5.0)
            print("stalled:", json.dumps(results["stalled"]), flush=True)
        results["alive_after"] = server.process.poll() is None
    if args.out:
        args.out.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
