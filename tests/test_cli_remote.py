"""generate-image / animate --server URL against a real service (create_app on a loopback port,
in a thread of this process), compared with what a local run of the same command writes."""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from PIL import Image
from server_support import GatedText2Image, fake_handle

from opea_media.cli import cli
from opea_media.commands.progress import StepReporter
from opea_media.errors import ModelFailure

# The service's registry (conftest) runs float32; auto would be bfloat16 on a CPU with native bfloat16.
LOCAL = ["--model", "tiny", "--device", "cpu", "--dtype", "float32"]


@contextmanager
def service(handle: Any, data_dir: Path, **options: Any) -> Iterator[str]:
    """create_app(...) served on 127.0.0.1 by its own event loop in a thread; yields its URL once
    /health answers 200 (what `serve` does, without its signal handlers)."""
    from aiohttp import web

    from opea_media.server.app import create_app
    from opea_media.server.config import ServerConfig

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()

    async def start() -> tuple[web.AppRunner, int]:
        config = ServerConfig(service=handle.task, data_dir=data_dir, **options)
        runner = web.AppRunner(create_app(config, model_handle=handle), handler_cancellation=False)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    runner, port = asyncio.run_coroutine_threadsafe(start(), loop).result(60)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url + "/health", timeout=5):
                    break
            except OSError:
                assert time.monotonic() < deadline, "the service did not become ready"
                time.sleep(0.05)
        yield url
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def call(url: str, method: str = "GET", body: Any = None, key: str | None = None) -> Any:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = None if body is None else json.dumps(body).encode()
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=30) as r:
        return json.loads(r.read()) if r.headers.get_content_type() == "application/json" else r.read()


def jobs(url: str, key: str | None = None) -> list[dict[str, Any]]:
    """The service's jobs, oldest first."""
    return list(reversed(call(f"{url}/v1/jobs", key=key)["jobs"]))


def invoke(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def assert_one_line(result: Result, code: int, line: str) -> None:
    assert result.exit_code == code, result.output
    assert result.stderr.strip().splitlines() == [line], result.stderr


def free_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


@pytest.fixture
def t2i_service(registry: Any, tiny_t2i: Any, tmp_path_factory: Any) -> Iterator[str]:
    with service(registry.handle("text2image", "tiny"), tmp_path_factory.mktemp("t2i")) as url:
        yield url


class SlowStart:
    """The tiny image2video model, each clip starting after a pause: the client is following its
    job's events by then, so it sees every phase."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)
        return self.model.generate(*args, **kwargs)


# --- the same files as a local run ------------------------------------------------------------------


def test_generate_image_writes_the_service_pngs_named_and_seeded_as_a_local_run(
    t2i_service: str, tmp_path: Path
) -> None:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a lighthouse\na red fox\n", encoding="utf-8")
    common = ["--prompts-file", str(prompts), "-n", "2", "--seed", "40", "--steps", "2"]
    # A variable meant for `serve` (the model) is ignored by a client, not refused.
    remote = invoke(
        "generate-image",
        *common,
        "-o",
        str(tmp_path / "remote" / "out.png"),
        "--server",
        t2i_service,
        env={"OPEA_MEDIA_TEXT2IMAGE_MODEL": "somewhere/else"},
    )
    local = invoke("generate-image", *common, "-o", str(tmp_path / "local" / "out.png"), *LOCAL)
    assert remote.exit_code == 0, remote.output
    assert local.exit_code == 0, local.output
    assert remote.stdout.replace("remote", "local") == local.stdout
    names = [f"out-{k}.png" for k in range(1, 5)]
    assert sorted(p.name for p in (tmp_path / "remote").iterdir()) == names
    for name, seed in zip(names, range(40, 44), strict=True):
        written = (tmp_path / "remote" / name).read_bytes()
        assert written == (tmp_path / "local" / name).read_bytes(), name  # pixels and text chunks
        with Image.open(tmp_path / "remote" / name) as image:
            assert image.text["seed"] == str(seed) and image.text["model"] == "tiny"  # type: ignore[attr-defined]

    # The service's own result files, one job per prompt, are those bytes.
    done = jobs(t2i_service)
    assert [job["request"]["prompt"] for job in done] == ["a lighthouse", "a red fox"]
    files = [file for job in done for file in job["result"]["files"]]
    assert [file["seed"] for file in files] == [40, 41, 42, 43]
    for name, file in zip(names, files, strict=True):
        assert call(file["url"]) == (tmp_path / "remote" / name).read_bytes()


def test_animate_writes_each_clip_in_the_format_of_its_suffix_with_the_bar_naming_phases(
    registry: Any, tiny_i2v: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    descriptions: list[str] = []
    real_describe = StepReporter.describe

    def describe(self: StepReporter, text: str) -> None:
        descriptions.append(text)
        real_describe(self, text)

    monkeypatch.setattr(StepReporter, "describe", describe)
    frame = tmp_path / "frame.png"
    Image.new("RGB", (96, 80), (30, 120, 200)).save(frame)
    common = [str(frame), str(frame), "--seed", "3", "--steps", "2", "--frames", "4"]
    handle = fake_handle(SlowStart(registry.image2video("tiny")), task="image2video")
    with service(handle, tmp_path / "data") as url:
        remote = invoke("animate", *common, "-o", str(tmp_path / "remote.gif"), "--server", url)
        done = jobs(url)
        served = [call(file["url"]) for job in done for file in job["result"]["files"]]
    local = invoke("animate", *common, "-o", str(tmp_path / "local.gif"), *LOCAL)
    assert remote.exit_code == 0, remote.output
    assert remote.stdout.replace("remote", "local") == local.stdout
    assert "remote-1.gif (4 frames, 64x64, 7 fps, seed 3)" in remote.stdout
    # The service's own files, byte for byte. (Against a local run in this process the pixels may
    # differ in the last bit: this process's torch has run other tests' models on other threads.)
    assert [(tmp_path / f"remote-{k}.gif").read_bytes() for k in (1, 2)] == served
    assert [job["formats"] for job in done] == [["gif"], ["gif"]]
    assert [job["result"]["seeds"] for job in done] == [[3], [4]]
    for phase in ("encoding", "denoising", "decoding"):
        assert f"clip 1/2: {phase}" in descriptions, descriptions
    assert descriptions[-1] == "clip 2/2"


def test_the_progress_bar_shows_the_services_steps(t2i_service: str, tmp_path: Path) -> None:
    out = tmp_path / "bar.png"
    env = {"FORCE_COLOR": "1", "COLUMNS": "120"}  # rich draws its bar as on a terminal
    result = invoke(
        "generate-image", "a fox", "-o", str(out), "--steps", "3", "--server", t2i_service, env=env
    )
    assert result.exit_code == 0, result.output
    assert "generating" in result.stderr and "3/3" in result.stderr and "steps" in result.stderr
    quiet = invoke("generate-image", "a fox", "-o", str(out), "-q", "--server", t2i_service, env=env)
    assert quiet.exit_code == 0 and quiet.output == ""


# --- the key, and the service's refusals as one line --------------------------------------------------


def test_the_api_key_from_the_flag_or_the_variable(registry: Any, tiny_t2i: Any, tmp_path: Path) -> None:
    out = str(tmp_path / "keyed.png")
    with service(registry.handle("text2image", "tiny"), tmp_path / "data", api_key="sekrit") as url:
        by_variable = invoke(
            "generate-image",
            "a fox",
            "-o",
            out,
            "--steps",
            "2",
            "--server",
            url,
            env={"OPEA_MEDIA_API_KEY": "sekrit"},
        )
        assert by_variable.exit_code == 0, by_variable.output
        assert (
            invoke(
                "generate-image", "a fox", "-o", out, "--steps", "2", "--server", url, "--api-key", "sekrit"
            ).exit_code
            == 0
        )
        wrong = invoke("generate-image", "a fox", "-o", out, "--server", url, "--api-key", "guess")
        assert_one_line(
            wrong,
            2,
            f"Error: {url}: the API key given was refused; pass the service's key with --api-key or "
            "OPEA_MEDIA_API_KEY",
        )
        missing = invoke("generate-image", "a fox", "-o", out, "--server", url)
        assert_one_line(
            missing,
            2,
            f"Error: {url}: it needs an API key; pass the service's key with --api-key or OPEA_MEDIA_API_KEY",
        )
        assert len(jobs(url, key="sekrit")) == 2


def test_a_bad_request_is_the_services_detail_with_a_bad_inputs_exit_code(
    t2i_service: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CLI checks what the service checks, so a 400 takes a body the CLI would not send.
    from opea_media.commands import generate_image

    monkeypatch.setattr(
        generate_image, "text2image_body", lambda params: {"prompt": params.prompt, "height": 70}
    )
    result = invoke("generate-image", "a fox", "-o", str(tmp_path / "x.png"), "--server", t2i_service)
    with pytest.raises(urllib.error.HTTPError) as refused:
        call(f"{t2i_service}/v1/jobs", "POST", {"prompt": "a fox", "height": 70})
    detail = json.loads(refused.value.read())["detail"]
    assert refused.value.code == 400 and "height" in detail
    assert_one_line(result, 2, f"Error: {detail}")
    assert not (tmp_path / "x.png").exists()


def test_a_service_of_the_other_task_is_named(t2i_service: str, tmp_path: Path) -> None:
    frame = tmp_path / "frame.png"
    Image.new("RGB", (64, 64)).save(frame)
    result = invoke("animate", str(frame), "-o", str(tmp_path / "c.mp4"), "--server", t2i_service)
    assert_one_line(
        result,
        2,
        f"Error: {t2i_service} runs the text2image service, not image2video: point --server at the "
        "image2video service (port 9369 by default)",
    )


def test_a_failed_job_is_its_detail_and_a_full_queue_says_retry_later(tmp_path: Path) -> None:
    model = GatedText2Image(fail=ModelFailure("the pipeline broke on step 3"))
    model.gate.set()
    out = str(tmp_path / "x.png")
    with service(fake_handle(model), tmp_path / "failing") as url:
        assert_one_line(
            invoke("generate-image", "a fox", "-o", out, "--server", url),
            4,
            "Error: the pipeline broke on step 3",
        )
        assert jobs(url)[-1]["state"] == "failed"

    busy = GatedText2Image()  # runs until its gate opens
    with service(fake_handle(busy), tmp_path / "busy", max_queue=1) as url:
        try:
            call(f"{url}/v1/jobs", "POST", {"prompt": "running"})
            assert busy.running.wait(30)
            call(f"{url}/v1/jobs", "POST", {"prompt": "waiting"})  # the queue is full now
            result = invoke("generate-image", "a fox", "-o", out, "--server", url)
        finally:
            busy.gate.set()
    assert result.exit_code == 3, result.output
    [line] = result.stderr.strip().splitlines()
    assert line.startswith(f"Error: {url} is busy: the queue is full") and "retry later" in line


def test_an_unreachable_service_is_one_line(tmp_path: Path) -> None:
    url = free_url()
    result = invoke("generate-image", "a fox", "-o", str(tmp_path / "x.png"), "--server", url)
    assert_one_line(
        result,
        3,
        f"Error: cannot reach the service at {url}: connection refused; is `opea-media serve` running there?",
    )


SERVER = ["--server", "http://127.0.0.1:9"]
SERVICE_DECIDES = "with --server the service's own model, device and levers apply"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (
            ["generate-image", "a fox", *SERVER, "--model", "tiny", "--dtype", "float32"],
            f"--model, --dtype: {SERVICE_DECIDES}; drop them, or run without --server to use them here",
        ),
        (
            ["generate-image", "a fox", *SERVER, "--threads", "2"],
            f"--threads: {SERVICE_DECIDES}; drop it, or run without --server to use it here",
        ),
        (
            ["generate-image", "a fox", *SERVER, "--init-image", "x.png"],
            "--init-image cannot be used with --server: the jobs API makes images from text only; "
            "or run without --server",
        ),
        (
            ["generate-image", "a fox", *SERVER, "--scheduler", "euler"],
            "--scheduler cannot be used with --server: the jobs API takes no scheduler; the service "
            "uses dpm++; or run without --server",
        ),
        (
            ["animate", "x.png", *SERVER, "--frames-dir", "frames"],
            "--frames-dir cannot be used with --server: the service sends the clips, not their frames; "
            "or run without --server",
        ),
        (
            ["generate-image", "a fox", "--api-key", "k"],
            "--api-key needs --server: it is the key of the service to run on",
        ),
    ],
)
def test_flags_that_mean_nothing_remotely_are_refused_before_anything_runs(
    args: list[str], line: str
) -> None:
    result = invoke(*args)
    assert result.exit_code == 2, result.output
    [shown] = result.stderr.strip().splitlines()
    assert shown.startswith(f"Error: {line} (see "), shown


# --- Ctrl-C ---------------------------------------------------------------------------------------


def _as_from_a_terminal() -> None:
    """SIGINT as a shell gives it: default disposition, not blocked, whatever the test process
    holds. In full-suite runs on a bfloat16 machine the CLI sometimes went on following its job 60 s
    after the SIGINT (faulthandler: still reading the events); the cause was not pinned down, and
    with this reset the full suite passed."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_cancels_the_job_on_the_service_and_exits_130(tmp_path: Path) -> None:
    model = GatedText2Image()  # steps every 10 ms until its gate opens: it runs until cancelled
    with service(fake_handle(model), tmp_path / "data") as url:
        # -X faulthandler: a CLI that hangs is made to print where (SIGABRT) before the test fails.
        command = [sys.executable, "-X", "faulthandler", "-m", "opea_media", "generate-image", "a fox"]
        command += ["--server", url]
        cli_process = subprocess.Popen(
            [*command, "-o", str(tmp_path / "x.png")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            preexec_fn=_as_from_a_terminal,
        )
        try:
            assert model.running.wait(120), "the job never started"
            deadline = time.monotonic() + 30
            while (jobs(url)[-1]["progress"] or {}).get("step", 0) < 5:  # the CLI is following it
                assert time.monotonic() < deadline
                time.sleep(0.05)
            cli_process.send_signal(signal.SIGINT)
            try:
                out, err = cli_process.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                cli_process.send_signal(signal.SIGABRT)
                where = cli_process.communicate(timeout=30)[1]
                raise AssertionError(f"the CLI hung after Ctrl-C:\n{where}") from None
        finally:
            if cli_process.poll() is None:
                cli_process.kill()
        [job] = jobs(url)
        deadline = time.monotonic() + 10
        while job["state"] != "cancelled" and time.monotonic() < deadline:
            time.sleep(0.05)
            job = jobs(url)[0]
    assert cli_process.returncode == 130, err
    assert out == ""
    assert err.strip().splitlines() in (
        [f"Interrupted: job {job['id']} will stop at its next step on the service."],
        [f"Interrupted: job {job['id']} cancelled on the service."],
    ), err
    assert job["state"] == "cancelled"
    assert model.interrupted == [["a fox"]]
    assert not (tmp_path / "x.png").exists()
