"""The jobs API in one process: submit and come back, follow, cancel, idempotency, the shared
bound, results and their retention, and a restart that runs again what was running.

The tiny real models run the jobs; GatedText2Image (tests/server_support.py) holds a job running
where a test needs one to stay running or queued.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import numpy as np
from aiohttp.test_utils import TestClient
from PIL import Image
from server_support import GatedText2Image, assert_error, b64, decode_png, fake_handle, png_bytes, until

ServerClient = Callable[..., Awaitable[TestClient]]

SMALL = {"prompt": "a red circle", "num_inference_steps": 4, "height": 64, "width": 64, "seed": 7}
CLIP = {"num_frames": 3, "num_inference_steps": 2, "height": 64, "width": 64, "seed": 3}


async def events(client: TestClient, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    """Every event of a job's stream, read until the stream ends."""
    response = await client.get(f"/v1/jobs/{job_id}/events")
    assert response.status == 200 and response.content_type == "text/event-stream"
    seen, name = [], None
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[len("event: ") :]
        elif line.startswith("data: "):
            seen.append((name, json.loads(line[len("data: ") :])))
    return seen


async def finished(client: TestClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        job = await (await client.get(f"/v1/jobs/{job_id}")).json()
        if job["state"] in ("succeeded", "failed", "cancelled"):
            return job
        assert asyncio.get_running_loop().time() < deadline, job
        await asyncio.sleep(0.02)


async def submit(client: TestClient, body: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    response = await client.post("/v1/jobs", json=body, **kwargs)
    assert response.status == 202, await response.text()
    job = await response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    return job


async def status_of(client: TestClient, url: str) -> int:
    """A result URL is absolute (the address the request came to)."""
    async with client.session.get(url) as response:
        return response.status


async def download(client: TestClient, url: str) -> bytes:
    async with client.session.get(url) as response:
        assert response.status == 200, url
        return await response.read()


# --- submit, follow, results ----------------------------------------------------------------


async def test_a_job_runs_to_the_same_image_the_synchronous_endpoint_makes(
    server_client: ServerClient, server_tiny_t2i: Any
) -> None:
    client = await server_client(server_tiny_t2i, service="text2image")
    job = await submit(client, SMALL)
    assert job["state"] in ("queued", "running") and job["request"]["seed"] == 7
    done = await finished(client, job["id"])
    assert done["state"] == "succeeded" and done["attempts"] == 1
    metrics = await (await client.get("/metrics")).text()
    assert 'opea_media_stored_jobs_finished_total{state="succeeded"} 1.0' in metrics
    assert done["started_at"] >= done["created_at"] and done["finished_at"] >= done["started_at"]
    (file,) = done["result"]["files"]
    assert file["format"] == "png" and file["seed"] == 7 and done["result"]["seeds"] == [7]
    png = Image.open(io.BytesIO(await download(client, file["url"])))
    assert "a red circle" in png.text["parameters"] and "Seed: 7" in png.text["parameters"]

    sync = await (await client.post("/v1/text2image", json=SMALL)).json()
    assert np.array_equal(np.asarray(png.convert("RGB")), np.asarray(decode_png(sync["images"][0])))


async def test_a_subscriber_sees_every_state_and_every_step(
    server_client: ServerClient, server_tiny_t2i: Any
) -> None:
    client = await server_client(server_tiny_t2i, service="text2image")
    ahead = await submit(client, {**SMALL, "num_inference_steps": 60})  # keeps the next one queued
    job = await submit(client, SMALL)
    stream = await asyncio.wait_for(events(client, job["id"]), 60)
    names = [name for name, _ in stream]
    assert names[0] == "queued" and stream[0][1]["position"] == 1
    assert names[1] == "running" and names[-1] == "succeeded" and stream[-1][1]["result"] is not None
    progress = [data["progress"] for name, data in stream if name == "progress"]
    assert [p["step"] for p in progress] == [1, 2, 3, 4] and {p["total"] for p in progress} == {4}
    assert [p["phase"] for p in progress] == ["denoising"] * 3 + ["decoding"]
    assert (await finished(client, ahead["id"]))["state"] == "succeeded"


async def test_a_late_subscriber_gets_the_final_state_and_the_stream_ends(
    server_client: ServerClient, server_tiny_t2i: Any
) -> None:
    client = await server_client(server_tiny_t2i, service="text2image")
    job = await submit(client, SMALL)
    await finished(client, job["id"])
    stream = await asyncio.wait_for(events(client, job["id"]), 5)
    assert [name for name, _ in stream] == ["succeeded"]


async def test_video_jobs_write_each_format_asked_for(server_client: ServerClient, server_tiny_i2v: Any) -> None:
    client = await server_client(server_tiny_i2v, service="image2video")
    body = {"images_path": [{"image_path": b64(png_bytes())}], **CLIP}
    job = await submit(client, body, params={"formats": "mp4,gif"})
    assert "images_path" not in job["request"] and job["formats"] == ["mp4", "gif"]
    stream = await events(client, job["id"])
    phases = [d["progress"]["phase"] for n, d in stream if d.get("progress")]
    assert "denoising" in phases and phases[-1] == "decoding"
    done = await finished(client, job["id"])
    assert [f["format"] for f in done["result"]["files"]] == ["mp4", "gif"]
    mp4, gif = [await download(client, f["url"]) for f in done["result"]["files"]]
    assert mp4[4:8] == b"ftyp" and gif[:6] == b"GIF89a"
    assert done["result"]["files"][0]["url"].endswith("generated.mp4")


async def test_bad_submissions_are_refused_with_the_field(server_client: ServerClient, server_tiny_i2v: Any) -> None:
    client = await server_client(server_tiny_i2v, service="image2video")
    good = {"images_path": [{"image_path": b64(png_bytes())}], **CLIP}
    await assert_error(await client.post("/v1/jobs", json={**good, "num_frames": 0}), 400, "num_frames")
    await assert_error(
        await client.post("/v1/jobs", json={**good, "images_path": [{"image_path": "bm90IGFuIGltYWdl"}]}),
        400,
        "images_path[0].image_path",
    )
    await assert_error(await client.post("/v1/jobs", json=good, params={"formats": "avi"}), 400, "avi")
    await assert_error(await client.get("/v1/jobs/nope"), 404, "no job")
    listed = await (await client.get("/v1/jobs")).json()
    assert listed["jobs"] == []  # nothing refused was stored
    assert (await client.get("/health")).status == 200


async def test_a_failed_job_keeps_the_detail_the_synchronous_endpoint_gives(server_client: ServerClient) -> None:
    from opea_media.errors import ModelFailure

    model = GatedText2Image(fail=ModelFailure("the pipeline returned nothing"))
    model.gate.set()
    client = await server_client(fake_handle(model), service="text2image")
    sync = await client.post("/v1/text2image", json={"prompt": "x"})
    expected = await assert_error(sync, 500)
    job = await submit(client, {"prompt": "x"})
    done = await finished(client, job["id"])
    assert done["state"] == "failed" and done["error"] == expected and done["result"] is None


# --- idempotency, paging --------------------------------------------------------------------


async def test_a_retried_submit_with_its_idempotency_key_is_the_same_job(
    server_client: ServerClient, server_tiny_t2i: Any
) -> None:
    client = await server_client(server_tiny_t2i, service="text2image")
    first = await submit(client, SMALL, headers={"Idempotency-Key": "order-17"})
    again = await client.post("/v1/jobs", json=SMALL, headers={"Idempotency-Key": "order-17"})
    assert again.status == 202 and again.headers["Idempotent-Replayed"] == "true"
    assert (await again.json())["id"] == first["id"]
    other = await client.post("/v1/jobs", json={**SMALL, "prompt": "else"}, headers={"Idempotency-Key": "order-17"})
    await assert_error(other, 422, "Idempotency-Key")
    await assert_error(
        await client.post("/v1/jobs", json=SMALL, headers={"Idempotency-Key": "has space"}), 400, "Idempotency-Key"
    )
    unkeyed = await submit(client, SMALL)
    assert unkeyed["id"] != first["id"]
    listed = await (await client.get("/v1/jobs")).json()
    assert [j["id"] for j in listed["jobs"]] == [unkeyed["id"], first["id"]]


async def test_the_list_pages_newest_first(server_client: ServerClient, server_tiny_t2i: Any) -> None:
    client = await server_client(server_tiny_t2i, service="text2image")
    ids = [(await submit(client, {**SMALL, "num_inference_steps": 1}))["id"] for _ in range(3)]
    page = await (await client.get("/v1/jobs", params={"limit": "2"})).json()
    assert [j["id"] for j in page["jobs"]] == ids[:0:-1] and page["next"] == ids[1]
    rest = await (await client.get("/v1/jobs", params={"limit": "2", "before": page["next"]})).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]] and rest["next"] is None
    await assert_error(await client.get("/v1/jobs", params={"limit": "0"}), 400, "limit")
    await assert_error(await client.get("/v1/jobs", params={"before": "nope"}), 400, "before")


# --- cancel, the bound ----------------------------------------------------------------------


async def test_cancel_in_each_state(server_client: ServerClient) -> None:
    model = GatedText2Image()
    client = await server_client(fake_handle(model), service="text2image")
    running = await submit(client, {"prompt": "running"})
    await until(lambda: model.running.is_set())
    queued = await submit(client, {"prompt": "queued"})
    assert (await (await client.get(f"/v1/jobs/{queued['id']}")).json())["position"] == 1

    dropped = await client.delete(f"/v1/jobs/{queued['id']}")
    assert dropped.status == 200 and (await dropped.json())["state"] == "cancelled"

    stopping = await client.delete(f"/v1/jobs/{running['id']}")
    assert stopping.status == 202
    assert (await stopping.json())["cancel_requested"] is True
    done = await finished(client, running["id"], timeout=10)
    assert done["state"] == "cancelled" and model.interrupted == [["running"]]
    assert model.calls == [["running"]]  # the queued job never ran

    again = await client.delete(f"/v1/jobs/{queued['id']}")
    assert again.status == 200 and (await again.json())["state"] == "cancelled"
    model.gate.set()
    finished_job = await submit(client, {"prompt": "done"})
    await finished(client, finished_job["id"])
    await assert_error(await client.delete(f"/v1/jobs/{finished_job['id']}"), 409, "already succeeded")
    await assert_error(await client.delete("/v1/jobs/nope"), 404)


async def test_a_follower_that_hangs_up_is_no_error_and_its_job_goes_on(
    server_client: ServerClient, caplog: Any
) -> None:
    # The CLI's Ctrl-C, or a closed browser tab: the service logged "unhandled error" for it.
    model = GatedText2Image()
    client = await server_client(fake_handle(model), service="text2image")
    job = await submit(client, {"prompt": "followed"})
    await until(lambda: model.running.is_set())
    stream = await client.get(f"/v1/jobs/{job['id']}/events")
    assert (await stream.content.readline()).startswith(b"event: ")
    stream.close()  # hang up while steps keep coming, one every 10 ms
    await asyncio.sleep(0.5)
    model.gate.set()
    assert (await finished(client, job["id"]))["state"] == "succeeded"
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []


async def test_jobs_and_requests_share_one_bound(server_client: ServerClient) -> None:
    model = GatedText2Image()
    client = await server_client(fake_handle(model), service="text2image", max_queue=2)
    try:
        await submit(client, {"prompt": "runs"})
        await until(lambda: model.running.is_set())
        await submit(client, {"prompt": "waits 1"})
        await submit(client, {"prompt": "waits 2"})
        full = await client.post("/v1/jobs", json={"prompt": "one too many"})
        await assert_error(full, 503, "queue is full")
        assert int(full.headers["Retry-After"]) >= 1
        sync = await client.post("/v1/text2image", json={"prompt": "sync"})
        await assert_error(sync, 503, "queue is full")
    finally:
        model.gate.set()


async def test_the_api_key_applies(server_client: ServerClient, server_tiny_t2i: Any) -> None:
    client = await server_client(server_tiny_t2i, service="text2image", api_key="k3y")
    await assert_error(await client.post("/v1/jobs", json=SMALL), 401)
    await assert_error(await client.get("/v1/jobs"), 401)
    job = await submit(client, SMALL, headers={"Authorization": "Bearer k3y"})
    got = await client.get(f"/v1/jobs/{job['id']}", headers={"Authorization": "Bearer k3y"})
    assert got.status == 200


# --- retention and the disk budget ----------------------------------------------------------


async def test_the_disk_budget_evicts_the_oldest_results_first(
    server_client: ServerClient, server_tiny_t2i: Any, tmp_path: Any
) -> None:
    # One 64 px PNG is a few kB: a budget of one MiB is exceeded by padding the folder first.
    client = await server_client(
        server_tiny_t2i, service="text2image", output_dir=tmp_path / "out", output_max_bytes=1024 * 1024
    )
    old = await finished(client, (await submit(client, SMALL))["id"])
    (tmp_path / "out" / "filler-0123.bin").write_bytes(b"\0" * (1024 * 1024 - 20_000))
    new = await finished(client, (await submit(client, {**SMALL, "seed": 8}))["id"])
    new_files = [await status_of(client, f["url"]) for f in new["result"]["files"]]
    old_files = [await status_of(client, f["url"]) for f in old["result"]["files"]]
    assert new_files == [200] and old_files == [404]


async def test_finished_jobs_are_forgotten_after_the_retention_time(
    server_client: ServerClient, server_tiny_t2i: Any
) -> None:
    client = await server_client(server_tiny_t2i, service="text2image", output_retention=0.5)
    done = await finished(client, (await submit(client, SMALL))["id"])
    url = done["result"]["files"][0]["url"]
    for _ in range(100):
        if (await client.get(f"/v1/jobs/{done['id']}")).status == 404:
            break
        await asyncio.sleep(0.05)
    await assert_error(await client.get(f"/v1/jobs/{done['id']}"), 404, "no job")
    assert await status_of(client, url) == 404


# --- restarts -------------------------------------------------------------------------------


async def test_a_restart_runs_queued_and_interrupted_jobs_and_keeps_results(
    server_client: ServerClient, server_tiny_t2i: Any, tmp_path: Any
) -> None:
    model = GatedText2Image()
    first = await server_client(fake_handle(model), service="text2image", data_dir=tmp_path)
    done = await submit(first, {"prompt": "done before"})
    model.gate.set()
    done = await finished(first, done["id"])
    model.gate.clear()
    model.running.clear()
    running = await submit(first, {"prompt": "interrupted"})
    await until(lambda: model.running.is_set())
    queued = await submit(first, {"prompt": "queued"})
    await first.close()  # the app stops: the running job goes back to the queue

    second = await server_client(server_tiny_t2i, service="text2image", data_dir=tmp_path)
    again = await finished(second, running["id"])
    assert again["state"] == "succeeded" and again["attempts"] == 2
    assert (await finished(second, queued["id"]))["state"] == "succeeded"
    kept = await (await second.get(f"/v1/jobs/{done['id']}")).json()
    assert kept["state"] == "succeeded"
    assert await status_of(second, kept["result"]["files"][0]["url"]) == 200


async def test_a_second_service_on_the_same_data_folder_is_refused(tmp_path: Any) -> None:
    from opea_media.errors import InvalidInput
    from opea_media.server.job_store import SqliteJobStore

    store = SqliteJobStore(tmp_path / "jobs.sqlite3")
    try:
        try:
            SqliteJobStore(tmp_path / "jobs.sqlite3")
        except InvalidInput as exc:
            assert "in use by process" in exc.detail and "--data-dir" in exc.detail
        else:
            raise AssertionError("a second store opened the same folder")
    finally:
        store.close()
    SqliteJobStore(tmp_path / "jobs.sqlite3").close()  # free again once the first closed


async def test_automatic1111s_progress_and_interrupt_see_a_running_job(server_client: ServerClient) -> None:
    model = GatedText2Image()
    client = await server_client(fake_handle(model), service="text2image")
    job = await submit(client, {"prompt": "watched"})
    await until(lambda: model.running.is_set())
    await asyncio.sleep(0.05)
    progress = await (await client.get("/sdapi/v1/progress")).json()
    assert progress["state"]["sampling_step"] >= 1 and progress["state"]["job_count"] == 1
    assert (await client.post("/sdapi/v1/interrupt")).status == 200
    assert (await finished(client, job["id"], timeout=10))["state"] == "cancelled"
