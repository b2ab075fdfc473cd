"""`opea-media serve` as a real process on a free loopback port, for the fuzz, load, soak and fault tests.

Also importable from scripts outside pytest (tests/integration/soak.py): no pytest imports here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STARTUP_TIMEOUT = 180.0  # importing torch on a busy CI machine, then loading the tiny model


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def command() -> list[str]:
    """The installed console script when there is one, as a user would run it."""
    script = Path(sys.executable).with_name("opea-media")
    if script.exists():
        return [str(script)]
    found = shutil.which("opea-media")
    return [found] if found else [sys.executable, "-m", "opea_media"]


@dataclass
class LiveService:
    """One running service; every request goes to 127.0.0.1 only."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def call(
        self, path: str, body: dict[str, Any] | None = None, timeout: float = 120
    ) -> tuple[int, dict[str, Any]]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        request = urllib.request.Request(self.url(path), data=data, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as err:
            return err.code, json.loads(err.read())

    def wait_ready(self, *, expect: str = "healthy") -> dict[str, Any]:
        """Wait until /health leaves "loading"; assert it reached `expect` ("healthy" or "failed")."""
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"the service exited early:\n{self.log_path.read_text()}")
            try:
                _status, body = self.call("/health", timeout=5)
                if body["status"] != "loading":
                    assert body["status"] == expect, body
                    return body
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"not ready within {STARTUP_TIMEOUT} s:\n{self.log_path.read_text()}")

    def metrics(self) -> dict[str, float]:
        """Every sample of /metrics by its full name with labels, e.g. 'opea_media_queue_depth'."""
        with urllib.request.urlopen(self.url("/metrics"), timeout=30) as response:
            text = response.read().decode()
        samples = {}
        for line in text.splitlines():
            match = re.fullmatch(r"([a-zA-Z_:][\w:]*(?:\{[^}]*\})?) (\S+)", line)
            if match:
                samples[match.group(1)] = float(match.group(2))
        return samples

    def requests_by_status(self, endpoint: str, method: str = "POST") -> dict[int, int]:
        found = {}
        pattern = re.compile(
            rf'opea_media_http_requests_total\{{endpoint="{re.escape(endpoint)}",method="{method}",status="(\d+)"\}}'
        )
        for name, value in self.metrics().items():
            match = pattern.fullmatch(name)
            if match:
                found[int(match.group(1))] = int(value)
        return found

    def process_stats(self) -> dict[str, int]:
        """Resident memory (kB), threads and open file descriptors of the service process."""
        pid = self.process.pid
        status = Path(f"/proc/{pid}/status").read_text()
        rss = int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
        threads = int(re.search(r"^Threads:\s+(\d+)", status, re.MULTILINE).group(1))  # type: ignore[union-attr]
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return {"rss_kb": rss, "threads": threads, "fds": fds}

    def stop(self, timeout: float = 60) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = [line for line in self.log_path.read_text().splitlines() if line.strip()]
        return [json.loads(line) for line in lines]


def start_service(
    service: str, *extra: str, log_dir: Path, cache_dir: Path | None = None, env: dict[str, str] | None = None
) -> LiveService:
    """Start `opea-media serve --service SERVICE --model tiny` on a free port (--model in extra overrides)."""
    port = free_port()
    log_path = log_dir / f"{service}-{port}.log"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "OPEA_MEDIA_LOG_LEVEL": "info", **(env or {})}
    if cache_dir is not None:
        full_env["OPEA_MEDIA_CACHE"] = str(cache_dir)
    args = [*command(), "serve", "--service", service, "--model", "tiny", "--device", "cpu"]
    args += ["--host", "127.0.0.1", "--port", str(port)]
    if "--data-dir" not in extra:  # each service its own jobs, unless the test shares a folder
        args += ["--data-dir", str(log_dir / f"data-{service}-{port}")]
    args += extra
    with open(log_path, "wb") as log:
        process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    return LiveService(process, port, log_path, full_env)
