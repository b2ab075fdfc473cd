"""The image and the compose files, run for real on a Docker engine.

Builds the image (on this kind of machine: a base made with debootstrap and the local CPU torch
wheel, FACTS.md), starts docker-compose.dev.yml and calls both APIs through 127.0.0.1, checks the
memory limit and the user, then runs docker-compose.yml + docker-compose.scale.yml with two
replicas of each service behind nginx and stops a replica mid-run. Without an engine these tests
skip (locally) or fail (CI=true). `.ci/run` starts the engine (scripts/docker-engine.sh).
"""

from __future__ import annotations

import json
import os
import secrets
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest

from .docker_env import (
    GIB,
    Images,
    Project,
    build_images,
    call,
    compose_command,
    decode_png,
    free_port,
    inspect,
    png_data_uri,
    run,
    running,
    served_requests,
    unavailable,
    wait_for_health,
    wait_until_healthy,
)

PORTS = {"text2image": 9379, "image2video": 9369}
FINAL = ("succeeded", "failed", "cancelled")
T2I = {"prompt": "a lighthouse at dusk", "num_inference_steps": 2, "height": 64, "width": 64}
I2V = {
    "images_path": [{"image_path": png_data_uri()}],
    "num_frames": 4,
    "num_inference_steps": 2,
    "height": 64,
    "width": 64,
}


@pytest.fixture(scope="module")
def compose() -> list[str]:
    try:
        info = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=60, check=False)
    except (OSError, AssertionError) as exc:
        unavailable(f"no Docker engine ({exc}); start one with scripts/docker-engine.sh")
    if info.returncode != 0:
        unavailable(
            f"no Docker engine ({info.stderr.strip()[:200]}); start one with scripts/docker-engine.sh"
        )
    command = compose_command()
    if not command:
        unavailable("neither docker-compose nor `docker compose` is installed")
    return command


@pytest.fixture(scope="module")
def images(compose: list[str]) -> Images:
    built = build_images()
    size = int(inspect(built.app, "{{.Size}}"))
    timings = ", ".join(f"{name} {seconds:.0f} s" for name, seconds in built.seconds.items())
    print(f"\n{built.app}: {size / 1e9:.2f} GB; built in {timings}")
    assert size < 2.5e9, f"the image is {size / 1e9:.2f} GB; keep it under 2.5 GB"
    return built


@pytest.fixture
def dev(compose: list[str], images: Images) -> Iterator[Project]:
    ports = {name: free_port(port) for name, port in PORTS.items()}
    project = Project(
        compose=compose,
        files=["docker-compose.dev.yml"],
        name=f"opea-media-test-dev-{os.getpid()}",
        variables={
            "OPEA_MEDIA_IMAGE": images.app,
            "TEXT2IMAGE_PORT": str(ports["text2image"]),
            "IMAGE2VIDEO_PORT": str(ports["image2video"]),
        },
    )
    with running(project):
        yield project


def test_dev_compose_serves_both_apis_as_a_limited_non_root_user(dev: Project) -> None:
    containers = {service: dev.containers(service) for service in PORTS}
    assert all(len(ids) == 1 for ids in containers.values()), containers
    seconds = wait_until_healthy([ids[0] for ids in containers.values()], timeout=180)
    print(f"\ndev services healthy {seconds:.1f} s after `up -d` returned")

    t2i_port = dev.published(containers["text2image"][0], PORTS["text2image"])
    reply = call(t2i_port, "/v1/text2image", T2I)
    assert reply.status == 200, reply.body
    assert isinstance(reply.body, dict) and reply.body["status"] == "success"
    images = reply.body["images"]
    assert isinstance(images, list) and len(images) == 1
    assert decode_png(images[0]).size == (64, 64)

    i2v_port = dev.published(containers["image2video"][0], PORTS["image2video"])
    reply = call(i2v_port, "/v1/image2video", I2V)
    assert reply.status == 200, reply.body
    assert isinstance(reply.body, dict) and reply.body["status"] == "success"
    frames = reply.body["frames"]
    assert isinstance(frames, list) and len(frames) == 4
    assert {decode_png(frame).size for frame in frames} == {(64, 64)}

    for service, (container,) in containers.items():
        assert int(inspect(container, "{{.HostConfig.Memory}}")) == 8 * GIB, service
        assert int(inspect(container, "{{.HostConfig.MemoryReservation}}")) == 4 * GIB, service
        # The serving process itself (PID 1 of the container), as the host's ps sees it.
        top = run(["docker", "top", container, "-eo", "pid,uid,args"], timeout=30).stdout.splitlines()[1:]
        serving = [line.split(None, 2) for line in top if "serve" in line]
        assert serving and all(uid != "0" for _, uid, _ in serving), top
        # The mounted source is what runs, with DEBUG logs.
        where = run(
            ["docker", "exec", container, "python", "-c", "import opea_media; print(opea_media.__file__)"],
            timeout=60,
        ).stdout.strip()
        assert where == "/src/opea_media/__init__.py", where
        logs = run(["docker", "logs", container], timeout=60).stderr
        assert '"level": "debug"' in logs, f"{service}: no DEBUG log lines"


@pytest.fixture
def scaled(compose: list[str], images: Images) -> Iterator[tuple[Project, dict[str, int]]]:
    balancer = {name: free_port(port) for name, port in PORTS.items()}
    project = Project(
        compose=compose,
        files=["docker-compose.yml", "docker-compose.scale.yml"],
        name=f"opea-media-test-scale-{os.getpid()}",
        variables={
            "OPEA_MEDIA_IMAGE": images.app,
            "OPEA_NGINX_IMAGE": images.nginx,
            "OPEA_POSTGRES_IMAGE": images.postgres,
            "OPEA_PUBLISH_ADDRESS": "127.0.0.1",
            "TEXT2IMAGE_PORT": "0",
            "IMAGE2VIDEO_PORT": "0",
            "TEXT2IMAGE_BALANCER_PORT": str(balancer["text2image"]),
            "IMAGE2VIDEO_BALANCER_PORT": str(balancer["image2video"]),
            "TEXT2IMAGE_REPLICAS": "2",
            "IMAGE2VIDEO_REPLICAS": "2",
            "OPEA_MEDIA_TEXT2IMAGE_MODEL": "tiny",
            "OPEA_MEDIA_IMAGE2VIDEO_MODEL": "tiny",
            "OPEA_MEDIA_DEVICE": "cpu",
            # Four replicas on a small machine: one torch thread each, or they fight for the cores.
            "OPEA_MEDIA_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        },
    )
    with running(project):
        yield project, balancer


def test_scale_out_spreads_requests_and_survives_a_stopped_replica(
    scaled: tuple[Project, dict[str, int]],
) -> None:
    project, balancer = scaled
    replicas = {service: project.containers(service) for service in PORTS}
    assert all(len(ids) == 2 for ids in replicas.values()), replicas
    # Each replica's own port (published on a free port by TEXT2IMAGE_PORT=0 / IMAGE2VIDEO_PORT=0).
    own_port = {c: project.published(c, PORTS[s]) for s, ids in replicas.items() for c in ids}
    started = time.monotonic()
    for port in own_port.values():
        wait_for_health(port, timeout=180)
    print(f"\nfour replicas ready {time.monotonic() - started:.1f} s after `up -d` returned")
    address = {c: inspect(c, "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}") for c in own_port}
    payloads = {"text2image": T2I, "image2video": I2V}

    # Spread: sequential requests through the balancer reach both replicas of each service.
    started = time.monotonic()
    for service, ids in replicas.items():
        answered_by = []
        for _ in range(6):
            reply = call(balancer[service], f"/v1/{service}", payloads[service])
            assert reply.status == 200, reply.body
            answered_by.append(reply.headers["X-Upstream-Addr"].split(", ")[-1].rsplit(":", 1)[0])
        assert set(answered_by) == {address[c] for c in ids}, (service, answered_by, address)
        # ... and each replica counted the requests it served in its own /metrics.
        assert all(served_requests(own_port[c], f"/v1/{service}") >= 1 for c in ids), service

    # Failover: keep requests flowing while one replica of each service is stopped (SIGTERM: it
    # drains and exits); every request must still succeed.
    print(f"spread: 12 requests in {time.monotonic() - started:.1f} s")
    started = time.monotonic()
    victims = {service: ids[0] for service, ids in replicas.items()}
    assert {inspect(c, "{{.Config.StopTimeout}}") for c in victims.values()} == {"45"}
    per_client = {"text2image": 8, "image2video": 4}
    results: list[tuple[str, int, str]] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 300

    def client(service: str) -> None:
        for _ in range(per_client[service]):
            if time.monotonic() > deadline:
                return
            reply = call(balancer[service], f"/v1/{service}", payloads[service])
            with lock:
                results.append((service, reply.status, reply.headers.get("X-Upstream-Addr", "")))

    stop_asked_after: list[int] = []

    def stop_victims_once_running() -> None:
        while len(results) < 4 and time.monotonic() < deadline:
            time.sleep(0.05)
        stop_asked_after.append(len(results))
        # Plain `docker stop`: the compose file's stop_grace_period (45 s) is the container's.
        run(["docker", "stop", *victims.values()], timeout=120)

    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(client, service) for service in PORTS for _ in range(2)]
        futures.append(pool.submit(stop_victims_once_running))
        for future in futures:
            future.result()

    failed = [r for r in results if r[1] != 200]
    assert not failed, f"{len(failed)} of {len(results)} requests failed: {failed[:5]}"
    expected = 2 * sum(per_client.values())
    assert len(results) == expected, f"{len(results)} of {expected} requests finished in time"
    assert expected - stop_asked_after[0] >= 8, "the replicas were stopped too late to show anything"
    for service, container in victims.items():
        assert inspect(container, "{{.State.Status}} {{.State.ExitCode}}") == "exited 0", service
        survivor = address[next(c for c in replicas[service] if c != container)]
        last = [addr for s, _, addr in results if s == service][-3:]
        assert all(a.split(", ")[-1].startswith(survivor + ":") for a in last), (service, last)
    retried = [r for r in results if ", " in r[2]]
    print(
        f"failover: {len(results)} requests in {time.monotonic() - started:.1f} s, all 200, "
        f"{expected - stop_asked_after[0]} of them after `docker stop`; "
        f"{len(retried)} retried on the other replica"
    )


def test_scaled_replicas_share_the_jobs_queue_in_postgres(compose: list[str], images: Images) -> None:
    """docker-compose.scale.yml's text2image replicas and its postgres service: jobs submitted to
    one replica split between both, and either answers for any job and serves its result."""
    password = secrets.token_hex(12)
    project = Project(
        compose=compose,
        files=["docker-compose.yml", "docker-compose.scale.yml"],
        name=f"opea-media-test-jobs-{os.getpid()}",
        variables={
            "OPEA_MEDIA_IMAGE": images.app,
            "OPEA_POSTGRES_IMAGE": images.postgres,
            "OPEA_POSTGRES_PASSWORD": password,
            "OPEA_PUBLISH_ADDRESS": "127.0.0.1",
            "TEXT2IMAGE_PORT": "0",
            "TEXT2IMAGE_REPLICAS": "2",
            "OPEA_MEDIA_TEXT2IMAGE_MODEL": "tiny",
            "OPEA_MEDIA_DEVICE": "cpu",
            "OPEA_MEDIA_THREADS": "1",
            "HF_HUB_OFFLINE": "1",
        },
    )
    with running(project, "text2image"):  # and postgres, which it depends on
        replicas = project.containers("text2image")
        assert len(replicas) == 2 and len(project.containers("postgres")) == 1
        port = {c: project.published(c, PORTS["text2image"]) for c in replicas}
        for own in port.values():
            wait_for_health(own, timeout=180)
        first, second = replicas
        body = {"prompt": "a lighthouse at dusk", "num_inference_steps": 30, "height": 64, "width": 64}
        ids = []
        for seed in range(4):
            reply = call(port[first], "/v1/jobs", {**body, "seed": seed})
            assert reply.status == 202, reply.body
            ids.append(reply.body["id"])  # type: ignore[index]
        deadline = time.monotonic() + 180
        for job_id in ids:
            while (state := call(port[second], f"/v1/jobs/{job_id}").body["state"]) not in FINAL:  # type: ignore[index]
                assert time.monotonic() < deadline, f"job {job_id} still {state}"
                time.sleep(0.2)
            assert state == "succeeded", call(port[second], f"/v1/jobs/{job_id}").body
        logs = {}
        for container in replicas:
            done = run(["docker", "logs", container], timeout=60)
            logs[container] = done.stdout + done.stderr
        ran = {
            c: [json.loads(line)["job_id"] for line in text.splitlines() if '"job started' in line]
            for c, text in logs.items()
        }
        assert sorted(ran[first] + ran[second]) == sorted(ids), ran
        assert ran[first] and ran[second], f"the jobs did not split between the replicas: {ran}"
        # A result made by one replica, downloaded through the other (the shared output volume).
        view = call(port[second], f"/v1/jobs/{ran[first][0]}").body
        url = view["result"]["files"][0]["url"]  # type: ignore[index]
        with urllib.request.urlopen(url, timeout=30) as response:
            assert response.read()[:8] == b"\x89PNG\r\n\x1a\n"
        assert all(password not in text for text in logs.values())


def test_a_cpu_limit_on_the_container_sizes_torch_threads(images: Images) -> None:
    # Docker 20.10 here writes the limit to cgroup v1's cpu.cfs_quota_us; newer engines to cpu.max.
    probe = (
        "from opea_media.models.tuning import Tuning; print(Tuning().resolve('text2image', 'cpu').threads)"
    )
    limited = run(
        ["docker", "run", "--rm", "--cpus=1", "--entrypoint", "python", images.app, "-c", probe], timeout=120
    )
    assert limited.stdout.strip() == ("1" if (os.cpu_count() or 1) > 1 else "None"), limited.stdout
    unlimited = run(["docker", "run", "--rm", "--entrypoint", "python", images.app, "-c", probe], timeout=120)
    assert unlimited.stdout.strip() == "None", unlimited.stdout
