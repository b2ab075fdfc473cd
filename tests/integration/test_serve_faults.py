"""A real `opea-media serve` whose model folder is broken: it says why, refuses work, stays up."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from opea_media.models import sources

from .live_service import start_service


def test_a_broken_model_folder_is_reported_and_the_process_stays_up(
    tmp_path: Path, cache_dir: Path, tiny_t2i: Any
) -> None:
    folder = tmp_path / "broken-model"
    shutil.copytree(sources.resolve("text2image", "tiny", cache_root=cache_dir).location, folder)
    weights = next((folder / "unet").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 3])  # a cut-off download

    service = start_service("text2image", "--model", str(folder), log_dir=tmp_path, cache_dir=cache_dir)
    try:
        health = service.wait_ready(expect="failed")
        reason = health["detail"]  # what is wrong, and where
        assert reason.startswith(f"could not load {folder}: ") and health["status_code"] == 503
        assert str(weights) in reason
        status, body = service.call("/v1/text2image", {"prompt": "x", "num_inference_steps": 2})
        assert (status, body) == (503, {"detail": reason, "status_code": 503})
        assert service.call("/health/live") == (200, {"status": "alive"})  # no restart loop
        metrics = service.metrics()
        assert metrics["opea_media_model_ready"] == 0
        assert (
            metrics['opea_media_http_requests_total{endpoint="/v1/text2image",method="POST",status="503"}']
            == 1
        )
        assert service.process.poll() is None
        assert service.stop() == 0
        failures = [line for line in service.log_lines() if line["message"] == "model load failed"]
        assert failures and "Traceback" in failures[0]["exception"]  # the whole story, for the log only
    finally:
        service.kill()
