"""The jobs API's cost: a job (POST /v1/jobs, its events to the end, the result file downloaded)
against the synchronous POST /v1/text2image on the same loaded model, interleaved in one run; and
how far each `progress` event trails the pipeline's step callback that caused it.

`python -m benchmarks.jobs` (or the suite's `jobs` section). In one process, one clock: the step
callback's time is taken on the worker thread where the store records the step, the event's when
the client reads it off the stream.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from .stats import Sample, ratio

PROMPT = "a red circle on a blue background"


async def _measure(ref: str, *, height: int, width: int, steps: int, rounds: int) -> dict[str, Any]:
    import aiohttp
    from aiohttp import web

    from opea_media.models import ModelRegistry
    from opea_media.server import job_runner
    from opea_media.server.app import create_app
    from opea_media.server.config import ServerConfig

    from .service import free_port

    stepped: dict[tuple[str, int], float] = {}
    original = job_runner.JobRunner._stepped

    def timed(self: Any, record: Any, step: int, total: int) -> None:
        stepped[(record.id, step)] = time.perf_counter()
        original(self, record, step, total)

    job_runner.JobRunner._stepped = timed  # type: ignore[method-assign]
    handle = ModelRegistry(device="cpu", dtype="auto").handle("text2image", ref)
    handle.load()
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="opea-media-bench-jobs-") as data:
        app = create_app(
            ServerConfig(service="text2image", model=ref, host="127.0.0.1", port=port, data_dir=Path(data)),
            model_handle=handle,
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        url = f"http://127.0.0.1:{port}"
        body = {"prompt": PROMPT, "num_inference_steps": steps, "height": height, "width": width, "seed": 1}
        sync, jobs, delays = Sample("synchronous"), Sample("job"), Sample("event delay", unit="ms")
        try:
            async with aiohttp.ClientSession() as session:
                while (await session.get(url + "/health")).status != 200:
                    await asyncio.sleep(0.05)

                async def synchronous() -> None:
                    async with session.post(url + "/v1/text2image", json=body) as response:
                        assert response.status == 200, await response.text()
                        await response.read()

                async def job() -> None:
                    async with session.post(url + "/v1/jobs", json=body) as response:
                        assert response.status == 202, await response.text()
                        job_id = (await response.json())["id"]
                    final = None
                    async with session.get(f"{url}/v1/jobs/{job_id}/events") as stream:
                        async for raw in stream.content:
                            line = raw.decode()
                            if not line.startswith("data: "):
                                continue
                            arrived = time.perf_counter()
                            final = json.loads(line[6:])
                            progress = final.get("progress")
                            if progress and (job_id, progress["step"]) in stepped:
                                delays.values.append((arrived - stepped[(job_id, progress["step"])]) * 1000)
                    assert final is not None and final["state"] == "succeeded", final
                    async with session.get(final["result"]["files"][0]["url"]) as response:
                        assert response.status == 200
                        await response.read()

                await synchronous()  # warm-up: the first pipeline call pays for lazy set-up
                await job()
                delays.values.clear()
                for r in range(rounds):
                    order = (("synchronous", synchronous), ("job", job))
                    for name, run in order if r % 2 == 0 else order[::-1]:
                        started = time.perf_counter()
                        await run()
                        (sync if name == "synchronous" else jobs).values.append(time.perf_counter() - started)
        finally:
            await runner.cleanup()
            job_runner.JobRunner._stepped = original  # type: ignore[method-assign]
    return {
        "model": ref,
        "size": f"{width}x{height}",
        "steps": steps,
        "synchronous": sync.summary(),
        "job": jobs.summary(),
        "ratio": ratio(jobs, sync).summary(),
        "event_delay_ms": {**delays.summary(), "p99": delays.quantile(0.99)},
    }


def run(ref: str = "tiny", *, height: int = 64, width: int = 64, steps: int = 20, rounds: int = 20) -> dict[str, Any]:
    return asyncio.run(_measure(ref, height=height, width=width, steps=steps, rounds=rounds))


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m benchmarks.jobs", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    figures = run(args.model, height=args.size, width=args.size, steps=args.steps, rounds=args.rounds)
    s, j, r, d = figures["synchronous"], figures["job"], figures["ratio"], figures["event_delay_ms"]
    print(f"{figures['model']} {figures['size']}, {figures['steps']} steps, {r['n']} rounds interleaved")
    print(f"  synchronous  {s['median']:.3f} s [{s['p25']:.3f}-{s['p75']:.3f}]")
    print(f"  job          {j['median']:.3f} s [{j['p25']:.3f}-{j['p75']:.3f}]  (submit, events to the end, download)")
    print(f"  ratio        {r['median']:.3f}x [{r['p25']:.3f}-{r['p75']:.3f}]")
    print(f"  event delay  p50 {d['median']:.2f} ms, p99 {d['p99']:.2f} ms, max {d['max']:.2f} ms ({d['n']} steps)")


if __name__ == "__main__":
    main()
