"""Running the service for a benchmark: as `opea-media serve` in a subprocess, or in-process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get_json(url: str, timeout: float = 5.0) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def opea_media_command() -> list[str]:
    return [sys.executable, "-m", "opea_media"]


class ServeProcess:
    """`opea-media serve` on a free loopback port; `ready_seconds` is spawn-to-/health-200."""

    def __init__(
        self,
        service: str,
        model: str,
        *args: str,
        env: dict[str, str | None] | None = None,
        launcher: list[str] | None = None,
    ) -> None:
        """`env` is added to this process's environment (None removes a variable); `launcher`
        replaces `python -m opea_media` as the command that `serve ...` is appended to."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # Each server its own jobs store: several run side by side.
        self._data = tempfile.TemporaryDirectory(prefix="opea-media-bench-data-")
        environment = {**os.environ, **(env or {})}
        command = [
            *(launcher or opea_media_command()),
            "serve",
            "--service",
            service,
            "--model",
            model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--log-level",
            "warning",
            "--data-dir",
            self._data.name,
            *args,
        ]
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            command,
            cwd=ROOT,
            env={k: v for k, v in environment.items() if v is not None},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.ready_seconds: float | None = None

    def wait_ready(self, timeout: float = 900.0, poll: float = 0.02) -> float:
        deadline = self.started + timeout
        while time.perf_counter() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"serve exited with {self.process.returncode}: {self.stderr_tail()}")
            try:
                status, _ = get_json(self.url + "/health", timeout=1.0)
            except OSError:
                status = 0
            if status == 200:
                self.ready_seconds = time.perf_counter() - self.started
                return self.ready_seconds
            time.sleep(poll)
        self.stop()
        raise TimeoutError(f"serve was not ready within {timeout:g} s")

    def stderr_tail(self) -> str:
        if self.process.stderr is None or self.process.poll() is None:
            return ""
        return self.process.stderr.read()[-2000:]

    def peak_rss_mib(self) -> float | None:
        try:
            status = Path(f"/proc/{self.process.pid}/status").read_text()
        except OSError:
            return None
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._data.cleanup()

    def __enter__(self) -> ServeProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
