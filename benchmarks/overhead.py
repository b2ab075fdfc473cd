"""Service overhead: POST /v1/text2image end to end against a direct diffusers call (the floor).

Both run in this one process on the same loaded pipeline, one after the other and interleaved:
the service through its app factory on a loopback port, the floor as `pipe(...)` with the same
prompt, size, steps, guidance, seed and sampler, returning PIL images like the service's model
does. What the service adds is HTTP, JSON, the queue hop to its worker thread, PNG encoding and
base64.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .stats import Sample, ratio

PROMPT = "a photograph of an astronaut riding a horse"


async def _measure(
    ref: str, *, height: int, width: int, steps: int, rounds: int, device: str, dtype: str
) -> dict[str, Any]:
    import time

    import aiohttp
    import torch
    from aiohttp import web
    from diffusers import DPMSolverMultistepScheduler

    from opea_media.models import ModelRegistry
    from opea_media.params import TEXT2IMAGE_DEFAULT_GUIDANCE, TEXT2IMAGE_DEFAULT_SCHEDULER
    from opea_media.server.app import create_app
    from opea_media.server.config import ServerConfig

    from .service import free_port

    registry = ModelRegistry(device=device, dtype=dtype)
    handle = registry.handle("text2image", ref)
    model = handle.load()
    pipe = model.pipe
    assert TEXT2IMAGE_DEFAULT_SCHEDULER == "dpm++"  # the service's sampler, which the floor must use too
    floor_scheduler = DPMSolverMultistepScheduler.from_config(pipe.scheduler.config)

    port = free_port()
    app = create_app(
        ServerConfig(service="text2image", model=ref, host="127.0.0.1", port=port), model_handle=handle
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    body = {"prompt": PROMPT, "num_inference_steps": steps, "height": height, "width": width, "seed": 0}
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(600):
                async with session.get(url + "/health") as response:
                    if response.status == 200:
                        break
                await asyncio.sleep(0.05)

            async def service() -> None:
                async with session.post(url + "/v1/text2image", json=body) as response:
                    payload = await response.read()
                    assert response.status == 200, payload[:300]

            def direct() -> None:
                pipe.scheduler = floor_scheduler
                with torch.inference_mode():
                    pipe(
                        prompt=[PROMPT],
                        num_inference_steps=steps,
                        guidance_scale=TEXT2IMAGE_DEFAULT_GUIDANCE,
                        height=height,
                        width=width,
                        generator=[torch.Generator("cpu").manual_seed(0)],
                        output_type="pil",
                    )
                if device == "cuda":
                    torch.cuda.synchronize()

            samples = {"service": Sample("service"), "direct": Sample("direct")}
            await service()
            direct()  # warm-up of both paths
            for r in range(rounds):
                order = ("service", "direct") if r % 2 == 0 else ("direct", "service")
                for name in order:
                    start = time.perf_counter()
                    if name == "service":
                        await service()
                    else:
                        direct()
                    samples[name].values.append(time.perf_counter() - start)
    finally:
        await runner.cleanup()
    ratios = ratio(samples["service"], samples["direct"])
    return {
        "model": ref,
        "size": f"{height}x{width}",
        "steps": steps,
        "dtype": registry.placement_for("text2image").dtype_name,
        "service": samples["service"].summary(),
        "direct": samples["direct"].summary(),
        "ratio": ratios.summary(),
        "ratio_of_medians": samples["service"].median / samples["direct"].median,
    }


def run(
    ref: str, *, height: int, width: int, steps: int, rounds: int, device: str = "cpu", dtype: str = "auto"
) -> dict[str, Any]:
    return asyncio.run(
        _measure(ref, height=height, width=width, steps=steps, rounds=rounds, device=device, dtype=dtype)
    )


if __name__ == "__main__":
    import json

    print(json.dumps(run("tiny", height=64, width=64, steps=20, rounds=10), indent=1))
