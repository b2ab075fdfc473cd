"""The chart's rendered pods, run by Docker as the kubelet would run them (no cluster here).

`helm template -f ci-values.yaml` gives each service's container (image, args, environment from
its ConfigMap, user, read-only root, dropped capabilities, the /data and /tmp volumes as empty
writable mounts like an emptyDir, the probes) and the test pod. Each service container is started
with exactly those settings; the probes' own paths are polled (startup, then readiness and
liveness); the preStop command must exist in the image; the test pod's command (the chart's
smoke-test.py) runs in the container's network namespace against both; and a stop within the
pod's terminationGracePeriodSeconds must end in a clean exit. What this cannot show: scheduling,
Services, the HPA. Without an engine or helm these tests skip (locally) or fail (CI=true).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from .docker_env import REPO, build_images, call, inspect, run, unavailable
from .test_helm_chart import CHART, TOOLS

WHAT = "chart pod tests"


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    helm = TOOLS / "helm"
    if not helm.exists():
        done = run(["bash", str(REPO / "scripts" / "helm-tools.sh"), str(TOOLS)], timeout=600, check=False)
        if done.returncode != 0 or not helm.exists():
            unavailable(f"no helm (scripts/helm-tools.sh: {done.stderr.strip()[-200:]})", WHAT)
    out = run(
        [str(helm), "template", "pods", str(CHART), "-f", str(CHART / "ci-values.yaml")], timeout=60
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def image() -> str:
    info = run(["docker", "info", "--format", "{{.ServerVersion}}"], timeout=60, check=False)
    if info.returncode != 0:
        unavailable(f"no Docker engine ({info.stderr.strip()[:200]}); scripts/docker-engine.sh", WHAT)
    return build_images().app


def docker_run_args(pod: dict[str, Any], config: dict[str, str], name: str) -> list[str]:
    """`docker run` options for a pod's only container, from its securityContext and volumes."""
    (spec,) = pod["containers"]
    context = {**pod.get("securityContext", {}), **spec.get("securityContext", {})}
    args = [
        "--name",
        name,
        "--user",
        f"{context['runAsUser']}:{context.get('runAsGroup', context['runAsUser'])}",
    ]
    if "fsGroup" in context:
        args += ["--group-add", str(context["fsGroup"])]
    if context.get("readOnlyRootFilesystem"):
        args.append("--read-only")
    if context.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    args += [f"--cap-drop={cap}" for cap in context.get("capabilities", {}).get("drop", [])]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    for mount in spec.get("volumeMounts", []):
        assert "emptyDir" in volumes[mount["name"]], f"only emptyDir volumes can be run here: {mount}"
        # An emptyDir: empty, writable by the pod's user. (Docker 20.10 keeps the image's 755 on a
        # tmpfs over an existing folder whatever mode it is given, so the owner is set instead.)
        owner = f"uid={context['runAsUser']},gid={context.get('fsGroup', context['runAsUser'])}"
        args += ["--tmpfs", f"{mount['mountPath']}:{owner}"]
    env = dict(config)
    env.update({e["name"]: e["value"] for e in spec.get("env", []) if "value" in e})
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    return args


@pytest.fixture(scope="module")
def pods(rendered: list[dict[str, Any]], image: str) -> Iterator[dict[str, tuple[str, int, dict[str, Any]]]]:
    """service -> (container, published port on 127.0.0.1, the rendered Deployment).

    The containers share a bridge network on which each answers to its Service's name, on the
    Service's port (= the container port its targetPort names): what the test pod calls.
    """
    configs = {o["metadata"]["name"]: o["data"] for o in rendered if o["kind"] == "ConfigMap"}
    services = {
        o["metadata"]["labels"]["app.kubernetes.io/component"]: o for o in rendered if o["kind"] == "Service"
    }
    network = f"opea-chart-pods-{os.getpid()}"
    run(["docker", "network", "create", network], timeout=60)
    started: dict[str, tuple[str, int, dict[str, Any]]] = {}
    try:
        for deployment in (o for o in rendered if o["kind"] == "Deployment"):
            pod = deployment["spec"]["template"]["spec"]
            (spec,) = pod["containers"]
            (config_ref,) = [e["configMapRef"]["name"] for e in spec["envFrom"]]
            (port,) = [p["containerPort"] for p in spec["ports"] if p["name"] == "http"]
            (service_port,) = services[spec["name"]]["spec"]["ports"]
            assert (service_port["targetPort"], service_port["port"]) == ("http", port)
            name = f"opea-chart-pod-{spec['name']}-{os.getpid()}"
            options = docker_run_args(pod, configs[config_ref], name)
            options += ["--network", network, "--network-alias", services[spec["name"]]["metadata"]["name"]]
            # The image's own entrypoint (opea-media) with the container's args, as the kubelet does.
            run(
                ["docker", "run", "-d", *options, "-p", f"127.0.0.1::{port}", image, *spec["args"]],
                timeout=120,
            )
            published = run(["docker", "port", name, str(port)], timeout=30).stdout.split()[0]
            started[spec["name"]] = (name, int(published.rsplit(":", 1)[1]), deployment)
        yield started
    except BaseException:
        for name, _, _ in started.values():
            print(run(["docker", "logs", "--tail", "40", name], timeout=30, check=False).stderr[-4000:])
        raise
    finally:
        for name, _, _ in started.values():
            run(["docker", "rm", "-f", name], timeout=60, check=False)
        run(["docker", "network", "rm", network], timeout=60, check=False)


def probe_ok(port: int, probe: dict[str, Any]) -> bool:
    try:
        return call(port, probe["httpGet"]["path"], timeout=probe.get("timeoutSeconds", 5)).status == 200
    except OSError:
        return False


def test_each_pod_passes_its_own_probes_on_a_read_only_root(
    pods: dict[str, tuple[str, int, dict[str, Any]]],
) -> None:
    assert set(pods) == {"text2image", "image2video"}
    try:
        check_probes(pods)
    except AssertionError:
        for name, _, _ in pods.values():
            print(run(["docker", "logs", "--tail", "20", name], timeout=30, check=False).stderr[-4000:])
        raise


def check_probes(pods: dict[str, tuple[str, int, dict[str, Any]]]) -> None:
    for service, (name, port, deployment) in pods.items():
        spec = deployment["spec"]["template"]["spec"]["containers"][0]
        startup = spec["startupProbe"]
        deadline = time.monotonic() + startup["periodSeconds"] * startup["failureThreshold"]
        started = time.monotonic()
        while not probe_ok(port, startup):
            state = inspect(name, "{{.State.Status}}")
            assert state == "running", f"{service}: the container is {state}"
            assert time.monotonic() < deadline, f"{service}: the startup probe never passed"
            time.sleep(startup["periodSeconds"])
        print(f"\n{service}: startup probe passed after {time.monotonic() - started:.0f} s")
        assert probe_ok(port, spec["readinessProbe"]), service
        assert probe_ok(port, spec["livenessProbe"]), service
        # It runs as the pod's user, on a root filesystem it cannot write to.
        uid = run(["docker", "exec", name, "id", "-u"], timeout=30).stdout.strip()
        assert uid == str(deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"])
        denied = run(["docker", "exec", name, "touch", "/home/opea/x"], timeout=30, check=False)
        assert denied.returncode != 0 and "Read-only file system" in denied.stderr
        # The preStop command exists in the image and returns at once for 0 s.
        pre_stop = spec["lifecycle"]["preStop"]["exec"]["command"]
        run(["docker", "exec", name, pre_stop[0], "0"], timeout=30)


def test_the_test_pod_passes_against_them(
    rendered: list[dict[str, Any]], pods: dict[str, tuple[str, int, dict[str, Any]]], image: str
) -> None:
    """The rendered test pod, its command, arguments and environment unchanged, on the pods' network."""
    (test_pod,) = [o for o in rendered if o["kind"] == "Pod"]
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = test_pod["spec"]
    (container,) = spec["containers"]
    name = f"opea-chart-testpod-{os.getpid()}"
    options = docker_run_args({**spec, "volumes": []}, {}, name)
    network = f"opea-chart-pods-{os.getpid()}"
    command = container["command"]
    done = run(
        ["docker", "run", "--rm", *options, "--network", network, "--entrypoint", command[0], image,
         *command[1:], *container["args"]],
        timeout=600,
        check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "all services answered" in done.stdout
    print("\n" + done.stdout.strip())


def test_a_stop_within_the_grace_period_exits_cleanly(
    pods: dict[str, tuple[str, int, dict[str, Any]]],
) -> None:
    for service, (name, _, deployment) in pods.items():
        grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        started = time.monotonic()
        run(["docker", "stop", "-t", str(grace), name], timeout=grace + 30)
        took = time.monotonic() - started
        assert inspect(name, "{{.State.ExitCode}}") == "0", service
        assert took < grace, f"{service}: {took:.0f} s, the kubelet would have killed it"
        print(f"\n{service}: SIGTERM to exit 0 in {took:.1f} s (grace {grace} s)")
