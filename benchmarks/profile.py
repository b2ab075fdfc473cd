"""Where `opea-media serve` spends its time under load: py-spy samples it while clients post.

    python -m benchmarks.profile [--service text2image] [--model tiny] [--clients 16] [--seconds 20]

Needs py-spy (`pip install -e '.[bench]'`) and the right to trace the server (root, or
kernel.yama.ptrace_scope 0). Every Python thread is sampled, idle ones included. The summary
gives the inference worker's time split into the pipeline itself, waiting for work and the
rest, and for every other thread its busy share of the run with the frames it was busy in.
torch's own OpenMP threads are not Python threads: their work shows as the worker's pipeline time.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from .concurrency import _load, _png_base64
from .service import ServeProcess

RATE = 100  # samples per second
# Leaf frames of a thread that waits (for a socket, a lock, a queue): sampled, but not working.
IDLE_LEAVES = ("select (selectors.py", "wait (threading.py", "_worker (concurrent/futures/thread.py")
BODIES: dict[str, dict[str, Any]] = {
    "text2image": {"prompt": "a red fox", "num_inference_steps": 20, "height": 64, "width": 64},
    "image2video": {"num_frames": 4, "num_inference_steps": 2, "height": 64, "width": 64},
}


def summarize(raw: str, seconds: float, rate: int = RATE) -> dict[str, Any]:
    """Shares of the run from py-spy's raw (collapsed) output: `thread;frame;...;frame count`."""
    worker: collections.Counter[str] = collections.Counter()
    busy: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        thread, *frames = stack.split(";")
        name = thread.split(": ", 1)[-1].strip()
        n = int(count)
        if name.endswith("-worker"):
            if any("diffusers/pipelines/" in f for f in frames):
                worker["pipeline"] += n
            elif any("_next_batch" in f for f in frames):
                worker["waiting for work"] += n
            else:
                worker[_short(frames[-1]) if frames else "?"] += n
        elif frames and not any(leaf in frames[-1] for leaf in IDLE_LEAVES):
            busy[name][_short(frames[-1])] += n
    possible = seconds * rate
    worker_total = sum(worker.values()) or 1
    return {
        "worker": {k: n / worker_total for k, n in worker.most_common()},
        "threads": {
            name: {"busy": sum(c.values()) / possible, "top": {k: n / possible for k, n in c.most_common(5)}}
            for name, c in sorted(busy.items(), key=lambda kv: -sum(kv[1].values()))
        },
    }


def _short(frame: str) -> str:
    function, _, where = frame.partition(" (")
    path = where.rstrip(")")
    return f"{function} ({'/'.join(Path(path).parts[-2:])})"


def run(service: str, model: str, clients: int, seconds: float) -> dict[str, Any]:
    py_spy = shutil.which("py-spy")
    if py_spy is None:
        raise SystemExit("py-spy is not installed: pip install -e '.[bench]'")
    body = dict(BODIES[service])
    if service == "image2video":
        body["images_path"] = [{"image_path": _png_base64()}]
    path = f"/v1/{service}"
    with ServeProcess(service, model, "--max-queue", "64") as server, tempfile.TemporaryDirectory() as tmp:
        server.wait_ready()
        asyncio.run(_load(server.url, path, body, clients=clients, requests=clients))  # warm up
        out = Path(tmp) / "profile.txt"
        spy = subprocess.Popen(
            [py_spy, "record", "--pid", str(server.process.pid), "--rate", str(RATE), "--duration",
             str(int(seconds)), "--format", "raw", "--threads", "--idle", "--output", str(out)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        started = time.perf_counter()
        requests = 0
        while spy.poll() is None and time.perf_counter() - started < seconds + 30:
            result = asyncio.run(_load(server.url, path, body, clients=clients, requests=clients))
            requests += result["requests"]
        _, errors = spy.communicate(timeout=60)
        if spy.returncode != 0 or not out.exists():
            raise SystemExit(f"py-spy failed ({spy.returncode}): {errors.strip()[-500:]}")
        summary = summarize(out.read_text(), seconds)
    return {"service": service, "model": model, "clients": clients, "seconds": seconds,
            "requests": requests, **summary}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.profile", description=__doc__.splitlines()[0])
    p.add_argument("--service", choices=tuple(BODIES), default="text2image")
    p.add_argument("--model", default="tiny")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--seconds", type=float, default=20.0)
    args = p.parse_args(argv)
    result = run(args.service, args.model, args.clients, args.seconds)
    print(f"{result['requests']} requests from {args.clients} clients in about {args.seconds:g} s")
    print("inference worker thread:")
    for what, share in result["worker"].items():
        print(f"  {share:6.1%}  {what}")
    print("other threads, busy share of the run (top frames):")
    for name, thread in result["threads"].items():
        print(f"  {thread['busy']:6.1%}  {name}")
        for frame, share in thread["top"].items():
            print(f"      {share:6.1%}  {frame}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
