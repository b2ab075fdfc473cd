"""Nothing accepted is lost: a real `serve` killed with SIGKILL mid-job, then started again on the
same --data-dir, runs the interrupted and the queued jobs and still serves the finished results."""

from __future__ import annotations

import json
import time
import urllib.request
from pathlib import Path
from typing import Any

from .live_service import LiveService, start_service

# A couple of seconds of real denoising with the tiny model, so the kill lands mid-job.
LONG = {"prompt": "a long one", "num_inference_steps": 150, "height": 64, "width": 64, "seed": 5}
SHORT = {"prompt": "a short one", "num_inference_steps": 2, "height": 64, "width": 64, "seed": 6}


def submit(service: LiveService, body: dict[str, Any]) -> str:
    status, job = service.call("/v1/jobs", body)
    assert status == 202, job
    return str(job["id"])


def job(service: LiveService, job_id: str) -> dict[str, Any]:
    status, body = service.call(f"/v1/jobs/{job_id}")
    assert status == 200, body
    return body


def wait_for(service: LiveService, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = job(service, job_id)
        if body["state"] in states:
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.05)


def running_mid_way(service: LiveService, job_id: str) -> None:
    deadline = time.monotonic() + 120
    while True:
        body = job(service, job_id)
        if body["state"] == "running" and (body["progress"] or {}).get("step", 0) >= 5:
            return
        assert body["state"] in ("queued", "running") and time.monotonic() < deadline, body
        time.sleep(0.02)


def start(tmp_path: Path, cache_dir: Path, *extra: str) -> LiveService:
    service = start_service(
        "text2image", "--data-dir", str(tmp_path / "data"), *extra, log_dir=tmp_path, cache_dir=cache_dir
    )
    service.wait_ready()
    return service


def test_kill_9_mid_job_then_a_restart_runs_it_again_and_keeps_the_results(
    tmp_path: Path, cache_dir: Path, tiny_t2i: Any
) -> None:
    first = start(tmp_path, cache_dir)
    try:
        done = wait_for(first, submit(first, SHORT), ("succeeded",))
        interrupted = submit(first, LONG)
        queued = submit(first, SHORT)
        running_mid_way(first, interrupted)
    finally:
        first.kill()  # SIGKILL: no drain, no cleanup

    second = start(tmp_path, cache_dir)
    try:
        again = wait_for(second, interrupted, ("succeeded", "failed", "cancelled"))
        assert again["state"] == "succeeded" and again["attempts"] == 2
        assert wait_for(second, queued, ("succeeded", "failed", "cancelled"))["state"] == "succeeded"
        kept = job(second, done["id"])
        assert kept["state"] == "succeeded"
        url = kept["result"]["files"][0]["url"]
        assert url.startswith(second.base_url)  # the address this request came to
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.status == 200 and response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        recovered = [line for line in second.log_lines() if "was running when its service stopped" in line["message"]]
        assert [line["job_id"] for line in recovered] == [interrupted]
    finally:
        second.stop()


def test_interrupted_jobs_fail_with_their_reason_when_asked(tmp_path: Path, cache_dir: Path, tiny_t2i: Any) -> None:
    first = start(tmp_path, cache_dir)
    try:
        interrupted = submit(first, LONG)
        running_mid_way(first, interrupted)
    finally:
        first.kill()
    second = start(tmp_path, cache_dir, "--interrupted-jobs", "fail")
    try:
        failed = wait_for(second, interrupted, ("succeeded", "failed", "cancelled"), timeout=30)
        assert failed["state"] == "failed" and "--interrupted-jobs fail" in failed["error"]["detail"]
        assert json.dumps(failed["error"]).count("submit it again") == 1
    finally:
        second.stop()
