"""Helpers for the Docker tests: the engine, the images they need, compose projects, HTTP calls.

Only loopback is ever called: the services are reached through ports published on 127.0.0.1.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").lower() == "true"
GIB = 1024**3

# Stand-ins for Docker Hub images where the Hub cannot be reached (FACTS: no Hub here). Set these
# variables to use the real images instead (GitHub Actions: python:3.11-slim, nginx:stable-alpine,
# postgres:16-alpine).
BASE_IMAGE_ENV = "OPEA_MEDIA_TEST_BASE_IMAGE"
NGINX_IMAGE_ENV = "OPEA_MEDIA_TEST_NGINX_IMAGE"
POSTGRES_IMAGE_ENV = "OPEA_MEDIA_TEST_POSTGRES_IMAGE"
TORCH_WHEEL_ENV = "OPEA_MEDIA_TORCH_WHEEL"
LOCAL_BASE_IMAGE = "opea-media-base:bookworm"
APP_IMAGE = "opea-media:test"
NGINX_STAND_IN = "opea-media-nginx:test"
POSTGRES_STAND_IN = "opea-media-postgres:test"
STAND_INS = {"nginx": (NGINX_IMAGE_ENV, NGINX_STAND_IN), "postgres": (POSTGRES_IMAGE_ENV, POSTGRES_STAND_IN)}
WHEELS_DIR = REPO / "docker" / "wheels"
# Where this kind of machine keeps the CPU torch wheel that pip installs from.
WHEEL_SEARCH = (Path("/opt/wheels"),)


def unavailable(reason: str, what: str = "Docker tests") -> None:
    """Skip with the reason shown, except in CI where these tests must run."""
    if IN_CI:
        pytest.fail(f"{reason}; CI=true, so the {what} must run, not skip", pytrace=False)
    # A skip reason is hidden without -rs; a warning shows in every run's summary.
    warnings.warn(f"{what} skipped: {reason}", stacklevel=2)
    pytest.skip(reason)


def run(
    args: Sequence[str], *, timeout: float, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    try:
        done = subprocess.run(
            list(args), cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise AssertionError(f"{' '.join(args)}: still running after {timeout:.0f} s") from exc
    if check and done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-40:])
        raise AssertionError(f"{' '.join(args)} exited {done.returncode}:\n{tail}")
    return done


def compose_command() -> list[str]:
    """docker-compose 1.29 (Debian) or the Compose v2 plugin, whichever is there; [] if neither."""
    for command in (["docker-compose"], ["docker", "compose"]):
        if not shutil.which(command[0]):
            continue
        if run([*command, "version"], timeout=30, check=False).returncode == 0:
            return command
    return []


def inspect(container: str, template: str) -> str:
    return run(["docker", "inspect", "--format", template, container], timeout=30).stdout.strip()


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port(preferred: int) -> int:
    """The spec's port when it is free here, else any free one."""
    if port_is_free(preferred):
        return preferred
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- images -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Images:
    app: str
    nginx: str
    postgres: str
    seconds: dict[str, float] = field(default_factory=dict)


def _torch_wheel() -> Path | None:
    explicit = os.environ.get(TORCH_WHEEL_ENV)
    if explicit:
        return Path(explicit)
    for folder in WHEEL_SEARCH:
        found = sorted(folder.glob("torch-*+cpu-cp311-cp311-*.whl"))
        if found:
            return found[-1]
    return None


def _stage_torch_wheel() -> list[str]:
    """Build arguments for torch: the local CPU wheel, copied into the build context, when there is one."""
    wheel = _torch_wheel()
    if wheel is None:
        return []  # the Dockerfile's default: PyTorch's CPU index
    WHEELS_DIR.mkdir(parents=True, exist_ok=True)
    for stale in WHEELS_DIR.glob("torch-*.whl"):
        if stale.name != wheel.name:
            stale.unlink()
    target = WHEELS_DIR / wheel.name
    if not target.exists() or target.stat().st_size != wheel.stat().st_size:
        shutil.copyfile(wheel, target)
    version = wheel.name.split("-")[1].split("+")[0]
    return ["--build-arg", "TORCH_SOURCE=wheels", "--build-arg", f"TORCH_VERSION={version}"]


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    # Without the buildx plugin a recent client refuses BuildKit; the classic builder caches too.
    if run(["docker", "buildx", "version"], timeout=30, check=False).returncode != 0:
        env["DOCKER_BUILDKIT"] = "0"
    return env


def build_images() -> Images:
    """The base stand-in (unless a real base is named), the app image and the nginx and postgres
    stand-ins (unless real ones are named)."""
    seconds: dict[str, float] = {}
    env = _build_env()
    base = os.environ.get(BASE_IMAGE_ENV)
    if not base:
        started = time.monotonic()
        run(["bash", str(REPO / "scripts" / "base-image.sh"), LOCAL_BASE_IMAGE], timeout=900)
        seconds["base image"] = time.monotonic() - started
        base = LOCAL_BASE_IMAGE

    started = time.monotonic()
    args = [
        "docker",
        "build",
        "--build-arg",
        f"BASE_IMAGE={base}",
        *_stage_torch_wheel(),
        "-t",
        APP_IMAGE,
        ".",
    ]
    run(args, timeout=2400, env=env)
    seconds["app image"] = time.monotonic() - started

    stand_ins = {}
    for name, (variable, tag) in STAND_INS.items():  # built from docker/<name>/ unless a real one is named
        stand_ins[name] = os.environ.get(variable) or ""
        if not stand_ins[name]:
            started = time.monotonic()
            args = ["docker", "build", "--build-arg", f"BASE_IMAGE={base}", "-t", tag, f"docker/{name}"]
            run(args, timeout=900, env=env)
            seconds[f"{name} stand-in"] = time.monotonic() - started
            stand_ins[name] = tag
    return Images(app=APP_IMAGE, nginx=stand_ins["nginx"], postgres=stand_ins["postgres"], seconds=seconds)


# --- compose projects ---------------------------------------------------------------------------


@dataclass
class Project:
    """One compose project: its files, its name and the variables its files read."""

    compose: list[str]
    files: list[str]
    name: str
    variables: dict[str, str]

    def __call__(
        self, *args: str, timeout: float = 300, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        files = [arg for f in self.files for arg in ("-f", f)]
        env = {**os.environ, **self.variables}
        return run([*self.compose, *files, "-p", self.name, *args], timeout=timeout, env=env, check=check)

    def containers(self, service: str) -> list[str]:
        return sorted(self("ps", "-q", service, timeout=60).stdout.split())

    def published(self, container: str, port: int) -> int:
        """The host port of a container's port, from `docker port` (127.0.0.1:NNNNN)."""
        out = run(["docker", "port", container, str(port)], timeout=30).stdout
        return int(out.split()[0].rsplit(":", 1)[1])


@contextmanager
def running(project: Project, *up_args: str) -> Iterator[Project]:
    """`up -d`, then always `down -v` (logs first when the body failed)."""
    try:
        project("up", "-d", "--no-build", *up_args, timeout=300)
        yield project
    except BaseException:
        logs = project("logs", "--no-color", "--tail", "60", timeout=60, check=False)
        print(logs.stdout[-20000:])
        raise
    finally:
        project("down", "-v", "--remove-orphans", timeout=300, check=False)


def wait_until_healthy(containers: Sequence[str], timeout: float) -> float:
    """Seconds until Docker reports every container healthy; fails on unhealthy or exited ones."""
    started = time.monotonic()
    while True:
        states = {
            c: inspect(c, "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}")
            for c in containers
        }
        if all(state == "running healthy" for state in states.values()):
            return time.monotonic() - started
        bad = {c: s for c, s in states.items() if "unhealthy" in s or not s.startswith("running")}
        assert not bad, f"containers not healthy: {bad}"
        assert time.monotonic() - started < timeout, f"not healthy after {timeout:.0f} s: {states}"
        time.sleep(1)


# --- HTTP on loopback ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Reply:
    status: int
    body: dict[str, object] | str
    headers: dict[str, str]


def call(port: int, path: str, payload: dict[str, object] | None = None, timeout: float = 120) -> Reply:
    url = f"http://127.0.0.1:{port}{path}"
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw, headers = response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as exc:
        status, raw, headers = exc.code, exc.read(), dict(exc.headers)
    text = raw.decode(errors="replace")
    try:
        body: dict[str, object] | str = json.loads(text)
    except ValueError:
        body = text
    return Reply(status, body, headers)


def wait_for_health(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if call(port, "/health", timeout=5).status == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"127.0.0.1:{port}/health not 200 after {timeout:.0f} s"
        time.sleep(0.5)


def decode_png(b64: str) -> Image.Image:
    raw = base64.b64decode(b64, validate=True)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG"
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def png_data_uri(size: int = 64) -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (200, 120, 40)).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def served_requests(port: int, endpoint: str) -> float:
    """Successful requests to `endpoint` that this replica counted in its own /metrics."""
    text = call(port, "/metrics", timeout=10).body
    assert isinstance(text, str)
    pattern = re.compile(
        r'^opea_media_http_requests_total\{(?=[^}]*endpoint="'
        + re.escape(endpoint)
        + r'")(?=[^}]*status="200")'
        r"[^}]*\}\s+([0-9.e+]+)$",
        re.M,
    )
    return sum(float(m.group(1)) for m in pattern.finditer(text))
