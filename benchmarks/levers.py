"""Speed of each lever, switched on and off on one loaded model and timed interleaved.

Memory effects are measured in fresh processes (memory.py); here only the time per generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from .stats import interleave, ratio

PROMPT = "a photograph of an astronaut riding a horse"


def _params(**kwargs: Any) -> Any:
    from opea_media.params import Text2ImageParams

    return Text2ImageParams(prompt=PROMPT, seed=0, **kwargs)


def _toggle(
    model: Any, params: Any, on: Callable[[], None], off: Callable[[], None]
) -> dict[str, Callable[[], None]]:
    def run(switch: Callable[[], Any]) -> Callable[[], None]:
        def go() -> None:
            switch()
            model.generate([params])

        return go

    return {"off": run(off), "on": run(on)}


def _compare(
    name: str, candidates: Mapping[str, Callable[[], Any]], rounds: int, **info: Any
) -> dict[str, Any]:
    samples = interleave(dict(candidates), rounds=rounds)
    a, b = list(samples.values())
    return {
        "lever": name,
        **info,
        "samples": {k: s.summary() for k, s in samples.items()},
        "ratio": ratio(b, a).summary(),
    }


def _layout(pipe: Any, fmt: Any) -> Callable[[], None]:
    """Switch the UNet's and VAE's convolution layout (channels_last or contiguous)."""

    def go() -> None:
        pipe.unet.to(memory_format=fmt)
        pipe.vae.to(memory_format=fmt)

    return go


def _generate(model: Any, params: Any) -> Callable[[], Any]:
    return lambda: model.generate([params])


def _batching(model: Any, batch: list[Any]) -> dict[str, Callable[[], Any]]:
    def one_by_one() -> None:
        for params in batch:
            model.generate([params])

    def one_call() -> None:
        cap, model.images_per_call = model.images_per_call, len(batch)  # all in one pipeline call
        try:
            model.generate(batch)
        finally:
            model.images_per_call = cap

    return {"one by one": one_by_one, "one call": one_call}


def _with_threads(n: int, model: Any, params: Any) -> Callable[[], Any]:
    import torch

    def go() -> None:
        torch.set_num_threads(n)
        model.generate([params])

    return go


def _dtype(bf16: Any, p: Any, rounds: int) -> dict[str, Any]:
    """float32 beside bfloat16; the float32 copy (5 GB) is gone when this returns."""
    from opea_media.models import ModelRegistry

    fp32 = ModelRegistry(device="cpu", dtype="float32").text2image("random:sd21")
    return _compare(
        "dtype float32 -> bfloat16",
        {"float32": _generate(fp32, p), "bfloat16": _generate(bf16, p)},
        rounds,
        model="random:sd21",
        size=p.height,
        steps=p.num_inference_steps,
    )


def run(*, rounds: int, quick: bool, log: Any = print) -> list[dict[str, Any]]:
    import torch

    from opea_media.models import ModelRegistry

    results: list[dict[str, Any]] = []
    size = 256
    steps = 2
    bf16 = ModelRegistry(device="cpu", dtype="bfloat16").text2image("random:sd21")
    p = bf16.complete(_params(num_inference_steps=steps, height=size, width=size))

    log("levers: dtype")
    results.append(_dtype(bf16, p, rounds))

    pipe = bf16.pipe
    log("levers: channels_last (CPU)")

    results.append(
        _compare(
            "channels_last",
            _toggle(bf16, p, _layout(pipe, torch.channels_last), _layout(pipe, torch.contiguous_format)),
            rounds,
            model="random:sd21",
            dtype="bfloat16",
            size=size,
            steps=steps,
        )
    )
    _layout(pipe, torch.channels_last)()  # the default for text2image on the CPU too

    log("levers: attention slicing")
    results.append(
        _compare(
            "attention slicing",
            _toggle(bf16, p, lambda: pipe.enable_attention_slicing("auto"), pipe.disable_attention_slicing),
            rounds,
            model="random:sd21",
            dtype="bfloat16",
            size=size,
            steps=steps,
        )
    )
    pipe.disable_attention_slicing()

    log("levers: VAE slicing, 4 images")
    p4 = dataclasses.replace(p, num_images_per_prompt=4)
    results.append(
        _compare(
            "VAE slicing (4 images per call)",
            _toggle(bf16, p4, pipe.vae.enable_slicing, pipe.vae.disable_slicing),
            rounds,
            model="random:sd21",
            dtype="bfloat16",
            size=size,
            steps=steps,
        )
    )
    pipe.vae.enable_slicing()

    log("levers: micro-batching in the pipeline")
    tiny = ModelRegistry(device="cpu").text2image("tiny")
    for label, model, q in (
        ("tiny", tiny, tiny.complete(_params(num_inference_steps=20, height=64, width=64))),
        ("random:sd21", bf16, p),
    ):
        results.append(
            _compare(
                "micro-batching: 4 requests in one call vs one by one",
                _batching(model, [dataclasses.replace(q, seed=k) for k in range(4)]),
                rounds,
                model=label,
                size=q.height,
                steps=q.num_inference_steps,
            )
        )

    log("levers: threads")
    available = torch.get_num_threads()
    for label, model, q in (
        ("tiny", tiny, tiny.complete(_params(num_inference_steps=20, height=64, width=64))),
        ("random:sd21", bf16, p),
    ):
        results.append(
            _compare(
                f"threads: {available} -> 1",
                {
                    f"{available} threads": _with_threads(available, model, q),
                    "1 thread": _with_threads(1, model, q),
                },
                rounds,
                model=label,
                size=q.height,
                steps=q.num_inference_steps,
            )
        )
        torch.set_num_threads(available)

    if not quick:
        log("levers: samplers at equal steps")
        samplers: dict[str, Callable[[], Any]] = {
            name: _generate(bf16, dataclasses.replace(p, scheduler=name))
            for name in ("ddim", "dpm++", "euler")
        }
        samples = interleave(samplers, rounds=rounds)
        results.append(
            {
                "lever": "sampler cost per call at equal steps",
                "model": "random:sd21",
                "size": size,
                "steps": steps,
                "samples": {k: s.summary() for k, s in samples.items()},
            }
        )
    return results


def run_cuda(*, rounds: int, log: Any = print) -> list[dict[str, Any]]:
    """The GPU levers that matter at SD 2.1's native 768 px and 25 steps, float16."""
    import torch

    from opea_media.models import ModelRegistry

    model = ModelRegistry(device="cuda").text2image("random:sd21")
    pipe = model.pipe
    p = model.complete(_params(num_inference_steps=25, height=768, width=768))
    results = []

    log("levers: channels_last (CUDA)")
    results.append(
        _compare(
            "channels_last",
            _toggle(model, p, _layout(pipe, torch.channels_last), _layout(pipe, torch.contiguous_format)),
            rounds,
            model="random:sd21",
            dtype="float16",
            size=768,
            steps=25,
        )
    )
    _layout(pipe, torch.channels_last)()
    log("levers: micro-batching (CUDA)")
    results.append(
        _compare(
            "micro-batching: 4 requests in one call vs one by one",
            _batching(model, [dataclasses.replace(p, seed=k) for k in range(4)]),
            rounds,
            model="random:sd21",
            size=768,
            steps=25,
        )
    )
    return results


# The variable is read once, when torch loads libgomp: each policy runs in processes of its own,
# which import torch before opea_media (whose own default would otherwise fill in PASSIVE).
OMP_POLICIES = ("libgomp default", "PASSIVE", "ACTIVE")
_TORCH_FIRST = (
    "import runpy, sys, torch; sys.argv = ['{name}', *sys.argv[1:]]; "
    "runpy.run_module('{module}', run_name='__main__')"
)


def _omp_env(policy: str) -> dict[str, str | None]:
    return {"OMP_WAIT_POLICY": None if policy == "libgomp default" else policy}


def _env(changes: dict[str, str | None]) -> dict[str, str]:
    merged = {**os.environ, **changes}
    return {k: v for k, v in merged.items() if v is not None}


@contextlib.contextmanager
def _neighbour(busy: bool) -> Iterator[None]:
    """One process spinning on a core: a neighbour container, or another service on the host."""
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        yield
    finally:
        if spinner is not None:
            spinner.kill()
            spinner.wait()


def openmp_wait_policy(*, rounds: int, log: Any = print) -> list[dict[str, Any]]:
    """OMP_WAIT_POLICY: libgomp's default (spin ~3 ms, then sleep), PASSIVE (opea-media's), ACTIVE.

    Each on an idle machine and beside one busy neighbour process: the pipeline alone
    (benchmarks/probe.py, fresh processes), then `serve` answering 1 and 16 clients.
    """
    from .concurrency import _load
    from .service import ROOT, ServeProcess
    from .stats import Sample

    def probe_seconds(policy: str, args: list[str]) -> list[float]:
        code = _TORCH_FIRST.format(name="probe", module="benchmarks.probe")
        out = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", code, *args],
            cwd=ROOT, env=_env(_omp_env(policy)), capture_output=True, text=True, check=True,
        )  # fmt: skip
        return [run["seconds"] for run in json.loads(out.stdout.strip().splitlines()[-1])["runs"][1:]]

    pipelines = (
        ("tiny", 64, 20, ["--model", "tiny", "--steps", "20", "--repeat", "8"]),
        ("random:sd21", 256, 2, ["--model", "random:sd21", "--size", "256", "--steps", "2", "--repeat", "3"]),
    )
    results: list[dict[str, Any]] = []
    for busy in (False, True):
        where = "beside a busy process" if busy else "idle machine"
        for label, size, steps, args in pipelines:
            log(f"levers: OpenMP wait policy, {label} pipeline, {where}")
            samples = {p: Sample(p) for p in OMP_POLICIES}
            for r in range(rounds):
                for policy in OMP_POLICIES if r % 2 == 0 else OMP_POLICIES[::-1]:
                    with _neighbour(busy):
                        samples[policy].values += probe_seconds(policy, ["--task", "text2image", *args])
            results.append(
                _policy_row(f"OMP_WAIT_POLICY, pipeline only, {where}", label, size, steps, samples)
            )

    body = {"prompt": "a red fox", "num_inference_steps": 20, "height": 64, "width": 64}
    launcher = [sys.executable, "-c", _TORCH_FIRST.format(name="opea-media", module="opea_media")]
    servers = {
        policy: ServeProcess(
            "text2image", "tiny", "--max-queue", "64", env=_omp_env(policy), launcher=launcher
        )
        for policy in OMP_POLICIES
    }
    try:
        for server in servers.values():
            server.wait_ready()
            asyncio.run(_load(server.url, "/v1/text2image", body, clients=1, requests=2))
        for busy in (False, True):
            where = "beside a busy process" if busy else "idle machine"
            for clients, requests in ((1, 24), (16, 64)):
                log(f"levers: OpenMP wait policy, tiny service, {clients} clients, {where}")
                samples = {p: Sample(p, unit="req/s") for p in OMP_POLICIES}
                for r in range(rounds):
                    for policy in OMP_POLICIES if r % 2 == 0 else OMP_POLICIES[::-1]:
                        with _neighbour(busy):
                            out = asyncio.run(
                                _load(
                                    servers[policy].url,
                                    "/v1/text2image",
                                    body,
                                    clients=clients,
                                    requests=requests,
                                )
                            )
                        samples[policy].values.append(out["rps"])
                results.append(
                    _policy_row(
                        f"OMP_WAIT_POLICY, service req/s, {clients} clients, {where}", "tiny", 64, 20, samples
                    )
                )
    finally:
        for server in servers.values():
            server.stop()
    return results


def _policy_row(lever: str, model: str, size: int, steps: int, samples: dict[str, Any]) -> dict[str, Any]:
    return {
        "lever": lever,
        "model": model,
        "size": size,
        "steps": steps,
        "samples": {k: s.summary() for k, s in samples.items()},
        "ratio": ratio_of_medians(samples["PASSIVE"], samples["libgomp default"]),
    }


def ratio_of_medians(a: Any, b: Any) -> dict[str, Any]:
    """For runs in separate processes, which cannot be paired round by round."""
    value = a.median / b.median
    return {"n": 1, "median": value, "p25": value, "p75": value, "min": value, "max": value, "unit": "x"}
