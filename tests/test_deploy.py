"""The Kubernetes and KServe manifests in deploy/, rendered and validated offline.

Every kustomization renders with kubectl's own kustomize, and every object it renders
validates strictly (unknown fields are errors) against the Kubernetes schemas of the
oldest and the newest Kubernetes that kubernetes-validate knows. Three things are not
Kubernetes objects and get their own checks: KServe's InferenceService and
ServingRuntime are CRDs (their pod specs and containers are validated as a Pod, the
pod KServe would make of them; their KServe fields are checked by name against
KServe's CRD schemas), and prometheus-adapter's rules are Helm values (their metric is
checked against what the service exports). Then the manifests are held to the code:
ports, probe paths, setting names and values, the drain, the security context.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import numpy as np
import pytest
import yaml
from app_support import STARTUP_S, copy_version, metric, npy, require, serve
from containerfiles import ROOT, load_compose, stage, venv_tool
from fastapi.testclient import TestClient
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource

from app.config import Settings
from app.main import create_app

DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = [
    "overlays/cpu",
    "overlays/gpu",
    "overlays/object-store",
    "overlays/queue-time",
    "kserve",
    "kserve-v2",
]
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SERVING_CONTAINERS = {"vae-serve", "kserve-container"}
# The drain ends within VAE_DRAIN_S + VAE_SHUTDOWN_GRACE_S; then the lifespan stops
# the batchers. The kill deadline leaves this much for that.
SHUTDOWN_SPARE_S = 5
# The probes' routes: the service's own, or the Open Inference Protocol's (which
# KServe's v2 runtimes use), as (readiness, liveness) pairs.
PROBE_ROUTES = {("/readyz", "/healthz"), ("/v2/health/ready", "/v2/health/live")}
# Kubernetes' appProtocol for HTTP/2 without TLS, which gRPC is here.
H2C = "kubernetes.io/h2c"

# KServe's own fields, by name, from its CRDs (kserve/kserve, config/crd/full:
# serving.kserve.io_inferenceservices.yaml, serving.kserve.io_servingruntimes.yaml).
# Everything else in a predictor is a Kubernetes pod spec, in a model a container.
KSERVE_PREDICTOR_FIELDS = {
    "minReplicas", "maxReplicas", "scaleTarget", "scaleMetric", "scaleMetricType",
    "autoScaling", "containerConcurrency", "timeout", "canaryTrafficPercent",
    "deploymentStrategy", "logger", "batcher", "model", "workerSpec",
    "storageUris", "storageContainerName", "labels", "annotations",
}  # fmt: skip
KSERVE_MODEL_FIELDS = {
    "modelFormat", "runtime", "runtimeVersion", "protocolVersion", "storageUri", "storage",
}  # fmt: skip
KSERVE_MODEL_FORMAT_FIELDS = {"name", "version"}
# A ServingRuntime's spec: KServe's fields, and the few pod spec fields its schema has
# (no securityContext, no terminationGracePeriodSeconds: the predictor sets those).
KSERVE_RUNTIME_FIELDS = {
    "supportedModelFormats", "protocolVersions", "multiModel", "disabled", "replicas",
    "grpcEndpoint", "grpcDataEndpoint", "httpDataEndpoint", "storageHelper",
    "builtInAdapter", "workerSpec", "labels", "annotations",
}  # fmt: skip
KSERVE_RUNTIME_POD_FIELDS = {
    "containers", "volumes", "nodeSelector", "affinity", "tolerations",
    "imagePullSecrets", "schedulerName", "hostIPC", "resourceClaims",
}  # fmt: skip
KSERVE_MODEL_FORMAT_ENTRY_FIELDS = {"name", "version", "autoSelect", "priority"}
KSERVE_PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
# The container KServe merges a predictor's model into.
KSERVE_CONTAINER = "kserve-container"


@cache
def rendered(path: str) -> tuple[dict[str, Any], ...]:
    result = subprocess.run(
        [venv_tool("kubectl"), "kustomize", DEPLOY / path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def objects(path: str, kind: str) -> list[dict[str, Any]]:
    return [copy.deepcopy(o) for o in rendered(path) if o["kind"] == kind]


def runtimes(path: str) -> dict[str, dict[str, Any]]:
    return {r["metadata"]["name"]: r for r in objects(path, "ServingRuntime")}


def runtime_pod(runtime: dict[str, Any]) -> dict[str, Any]:
    """A ServingRuntime's pod spec fields; any other field must be one of KServe's."""
    spec = runtime["spec"]
    unknown = set(spec) - KSERVE_RUNTIME_FIELDS - KSERVE_RUNTIME_POD_FIELDS
    assert not unknown, f"not fields of a ServingRuntime (KServe drops them): {sorted(unknown)}"
    for entry in spec.get("supportedModelFormats", []):
        assert set(entry) <= KSERVE_MODEL_FORMAT_ENTRY_FIELDS, entry
    assert set(spec.get("protocolVersions", [])) <= KSERVE_PROTOCOLS, spec["protocolVersions"]
    return {k: v for k, v in spec.items() if k in KSERVE_RUNTIME_POD_FIELDS}


def kserve_pod(isvc: dict[str, Any], known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The pod KServe makes of an InferenceService's predictor: a custom predictor's pod
    spec as it is; for a `model`, the pod spec of the ServingRuntime it names under the
    predictor's own pod fields, the model's container fields over the runtime's
    kserve-container (KServe's MergePodSpec and MergeRuntimeContainers; here a shallow
    merge, volumes joined)."""
    assert isvc["apiVersion"] == "serving.kserve.io/v1beta1"
    assert set(isvc["spec"]) == {"predictor"}
    predictor = isvc["spec"]["predictor"]
    pod = {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    if "model" not in predictor:
        return pod
    model = predictor["model"]
    assert set(model["modelFormat"]) <= KSERVE_MODEL_FORMAT_FIELDS, model["modelFormat"]
    overrides = {k: v for k, v in model.items() if k not in KSERVE_MODEL_FIELDS}
    base = copy.deepcopy(runtime_pod(known[model["runtime"]]))
    base["containers"] = [
        c | overrides if c["name"] == KSERVE_CONTAINER else c for c in base["containers"]
    ]
    volumes = base.get("volumes", []) + pod.get("volumes", [])
    return base | pod | ({"volumes": volumes} if volumes else {})


def as_pod(metadata: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def as_validated(obj: dict[str, Any], known: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What kubernetes-validate can check: the object, or a KServe object's pod as a Pod."""
    if obj["kind"] == "InferenceService":
        return as_pod(obj["metadata"], kserve_pod(obj, known))
    if obj["kind"] == "ServingRuntime":
        assert obj["apiVersion"] == "serving.kserve.io/v1alpha1"
        return as_pod(obj["metadata"], runtime_pod(obj))
    return obj


@dataclass
class Workload:
    """What runs the service: a Deployment's pod, or the pod KServe makes."""

    kind: str
    name: str
    pod: dict[str, Any]

    @property
    def container(self) -> dict[str, Any]:
        (found,) = [c for c in self.pod["containers"] if c["name"] in SERVING_CONTAINERS]
        return found


def workloads(path: str) -> list[Workload]:
    found = [
        Workload("Deployment", d["metadata"]["name"], d["spec"]["template"]["spec"])
        for d in objects(path, "Deployment")
    ]
    known = runtimes(path)
    for isvc in objects(path, "InferenceService"):
        pod = kserve_pod(isvc, known)
        found.append(Workload("InferenceService", isvc["metadata"]["name"], pod))
    return found


def the_workload(path: str) -> Workload:
    (found,) = workloads(path)
    return found


def settings_of(path: str, workload: Workload) -> dict[str, str]:
    """The VAE_* variables the serving container gets: ConfigMaps, then env values."""
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in objects(path, "ConfigMap")}
    values: dict[str, str] = {}
    for source in workload.container.get("envFrom", []):
        values |= maps[source["configMapRef"]["name"]]
    values |= {e["name"]: e["value"] for e in workload.container.get("env", []) if "value" in e}
    return {k: v for k, v in values.items() if k.startswith("VAE_")}


class GivenSettings(Settings):
    """The service's settings from the values given, not from this process's VAE_*
    environment (the tests' own, such as VAE_GRPC_PORT=0, must not fill gaps)."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


def app_settings(values: dict[str, str]) -> Settings:
    """The service's own parsing of those variables: unknown names and bad values fail."""
    fields = {name.removeprefix("VAE_").lower(): value for name, value in values.items()}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    return GivenSettings(**fields)


PROBE_KINDS = ("startup", "readiness", "liveness")


def probe_paths(container: dict[str, Any]) -> dict[str, str]:
    return {kind: container[f"{kind}Probe"]["httpGet"]["path"] for kind in PROBE_KINDS}


# --- rendering and schemas --------------------------------------------------------


def applied_paths(text: str) -> set[str]:
    return set(re.findall(r"kubectl (?:apply -k|kustomize) deploy/([\w/-]+)", text))


def test_the_documented_deploy_commands_are_the_ones_checked_here() -> None:
    page = (ROOT / "docs" / "deploy.md").read_text()
    assert applied_paths(page) == set(KUSTOMIZATIONS)
    for path in re.findall(r"`(deploy/[\w./-]+)`", page):
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    assert applied_paths(section) and applied_paths(section) <= set(KUSTOMIZATIONS)
    for path in re.findall(r"(deploy/[\w./-]+)", section):
        assert (ROOT / path).exists(), f"the README names {path}, which does not exist"


def test_every_kustomization_in_deploy_is_checked() -> None:
    found = {
        str(k.parent.relative_to(DEPLOY))
        for k in DEPLOY.rglob("kustomization.yaml")
        if "kind: Component" not in k.read_text()
    }
    assert found - {"base"} == set(KUSTOMIZATIONS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_rendered_object_validates_strictly(path: str, version: str) -> None:
    known = runtimes(path)
    for obj in rendered(path):
        kubernetes_validate.validate(as_validated(obj, known), version, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    (deployment,) = objects("overlays/cpu", "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_the_kserve_pod_specs_are_validated_too() -> None:
    (isvc,) = objects("kserve", "InferenceService")
    isvc["spec"]["predictor"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="portz"):
        kubernetes_validate.validate(as_validated(isvc, {}), K8S_VERSIONS[-1], strict=True)

    (runtime,) = objects("kserve-v2", "ServingRuntime")
    runtime["spec"]["containers"][0]["livenessProbe"]["httpGett"] = {}
    for obj in (runtime, *objects("kserve-v2", "InferenceService")):  # the pod it makes too
        with pytest.raises(kubernetes_validate.ValidationError, match="httpGett"):
            validated = as_validated(obj, {runtime["metadata"]["name"]: runtime})
            kubernetes_validate.validate(validated, K8S_VERSIONS[-1], strict=True)

    (isvc,) = objects("kserve-v2", "InferenceService")
    isvc["spec"]["predictor"]["minReplica"] = 2  # not KServe's, so validated as a pod field
    with pytest.raises(kubernetes_validate.ValidationError, match="minReplica"):
        validated = as_validated(isvc, runtimes("kserve-v2"))
        kubernetes_validate.validate(validated, K8S_VERSIONS[-1], strict=True)


def test_a_pod_field_that_a_servingruntime_lacks_is_refused() -> None:
    # Valid in a Pod, but not in a ServingRuntime's schema: the API server would
    # drop it without a word.
    (runtime,) = objects("kserve-v2", "ServingRuntime")
    runtime["spec"]["terminationGracePeriodSeconds"] = 30
    with pytest.raises(AssertionError, match="terminationGracePeriodSeconds"):
        as_validated(runtime, {})


# --- held to the code -------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_settings_are_real_settings_with_valid_values(path: str) -> None:
    for workload in workloads(path):
        values = settings_of(path, workload)
        settings = app_settings(values)
        assert settings.host == "0.0.0.0"
        mounts = {m["mountPath"]: m for m in workload.container["volumeMounts"]}
        if workload.kind != "InferenceService":  # KServe mounts /mnt/models itself
            store = mounts[str(settings.model_store)]
            assert store.get("readOnly") is True, "the service only reads the store"
        assert "/tmp" in mounts, "multipart uploads spool to /tmp: give it a writable one"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_ports_and_probes_are_the_services(path: str) -> None:
    routes = set(create_app(Settings()).openapi()["paths"])
    for workload in workloads(path):
        container = workload.container
        settings = app_settings(settings_of(path, workload))
        assert settings.grpc_port, "the Open Inference Protocol's gRPC port is on"
        declared = {p["containerPort"]: p for p in container["ports"]}
        assert set(declared) == {settings.port, settings.grpc_port}
        http, grpc = declared[settings.port], declared[settings.grpc_port]
        # KServe (and readers) know a gRPC port by its name.
        assert "grpc" in grpc["name"] and "grpc" not in http["name"]
        paths = probe_paths(container)
        assert paths["startup"] == paths["readiness"]
        assert (paths["readiness"], paths["liveness"]) in PROBE_ROUTES
        assert set(paths.values()) <= routes, "a probe asks a route the service does not have"
        for kind in PROBE_KINDS:
            assert container[f"{kind}Probe"]["httpGet"]["port"] in {http["name"], settings.port}
        for service in objects(path, "Service"):
            ports = {p["targetPort"]: p for p in service["spec"]["ports"]}
            assert set(ports) == {http["name"], grpc["name"]}
            assert ports[grpc["name"]]["appProtocol"] == H2C
            assert "appProtocol" not in ports[http["name"]]


def test_the_probe_routes_follow_the_drain() -> None:
    """Every readiness route a manifest probes says 503 from the drain on (so the pod
    leaves the endpoints), while its liveness route stays 200 (so it is not killed)."""
    probed = [probe_paths(w.container) for path in KUSTOMIZATIONS for w in workloads(path)]
    used = {(paths["readiness"], paths["liveness"]) for paths in probed}
    assert used == PROBE_ROUTES, "each pair of probe routes is used, so each is checked"
    settings = Settings(model_store=ROOT / "model_store", device="cpu", reload_interval_s=0)
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.portal is not None
        client.portal.call(app.state.registry.loaded_once.wait)
        for readiness, _ in used:
            assert client.get(readiness).status_code == 200, readiness
        app.state.registry.drain()  # what SIGTERM does first (app/drain.py)
        for readiness, liveness in used:
            answer = client.get(readiness)
            assert answer.status_code == 503, readiness
            assert "draining" in answer.text, answer.text
            assert client.get(liveness).status_code == 200, liveness


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_termination_grace_covers_the_drain(path: str) -> None:
    for workload in workloads(path):
        settings = app_settings(settings_of(path, workload))
        grace = workload.pod["terminationGracePeriodSeconds"]
        assert grace >= settings.drain_s + settings.shutdown_grace_s + SHUTDOWN_SPARE_S
        # Load balancers that go by readiness see the 503 within the drain window.
        readiness = workload.container["readinessProbe"]
        assert readiness["periodSeconds"] * readiness["failureThreshold"] <= settings.drain_s


# The service's own resident memory at rest, models loaded: 130-170 MiB measured with
# the bundled store (docs/limits.md), rounded up for larger models and the allocator.
PROCESS_BYTES = 256 * 2**20


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity ("1Gi", "512Mi") in bytes."""
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(quantity.removesuffix(suffix)) * factor
    return int(quantity)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_memory_limit_holds_the_budget(path: str) -> None:
    """docs/limits.md's rule: limit >= budget + the messages gRPC's core holds before the
    service sees them + the process with its models."""
    for workload in workloads(path):
        settings = app_settings(settings_of(path, workload))
        limit = _bytes(workload.container["resources"]["limits"]["memory"])
        grpc_held = settings.grpc_max_concurrency * settings.grpc_max_message_bytes
        assert limit >= settings.memory_budget_bytes + grpc_held + PROCESS_BYTES, path


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_containers_are_locked_down_and_sized(path: str) -> None:
    user = stage("serve").args("USER")[-1].split(":")[0]
    for workload in workloads(path):
        pod = workload.pod
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert str(pod["securityContext"]["runAsUser"]) == user  # the image's own user
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"] + pod.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, container["name"]
            assert context["readOnlyRootFilesystem"] is True, container["name"]
            assert context["capabilities"]["drop"] == ["ALL"], container["name"]
            resources = container["resources"]
            assert {"cpu", "memory"} <= set(resources["requests"]), container["name"]
            assert "memory" in resources["limits"], container["name"]
        # ONNX Runtime sizes its thread pool from the CPUs it sees (the node's), not
        # from the CPU quota: the thread count must be set to the limit.
        threads = app_settings(settings_of(path, workload)).intra_op_threads
        assert threads == int(workload.container["resources"]["limits"]["cpu"])


@pytest.mark.parametrize("target", ["serve", "serve-gpu"])
def test_the_images_expose_the_ports_they_serve(target: str) -> None:
    served = stage(target)
    env = dict(word.split("=", 1) for word in " ".join(served.args("ENV")).split() if "=" in word)
    settings = app_settings({k: v for k, v in env.items() if k.startswith("VAE_")})
    exposed = {int(port) for args in served.args("EXPOSE") for port in args.split()}
    assert exposed == {settings.port, settings.grpc_port}


def test_the_gpu_overlay_runs_the_gpu_image_on_one_gpu() -> None:
    gpu = the_workload("overlays/gpu")
    assert gpu.container["image"].split(":")[0].endswith("vae-serve-gpu")
    assert gpu.container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert app_settings(settings_of("overlays/gpu", gpu)).device == "cuda"
    cpu = the_workload("overlays/cpu")
    assert cpu.container["image"].split(":")[0].endswith("vae-serve")


def test_budget_and_autoscaler_select_the_deployment() -> None:
    (deployment,) = objects("overlays/cpu", "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (pdb,) = objects("overlays/cpu", "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    (hpa,) = objects("overlays/cpu", "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["spec"]["minReplicas"] >= 2, "one replica cannot drain without an outage"
    assert "replicas" not in deployment["spec"], "the autoscaler owns the count"


def test_model_store_comes_from_a_volume_or_from_object_storage() -> None:
    (pvc,) = objects("overlays/cpu", "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in the_workload("overlays/cpu").pod["volumes"]}
    assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert volumes["model-store"]["persistentVolumeClaim"]["readOnly"] is True

    deployment = the_workload("overlays/object-store")
    pod = deployment.pod
    assert objects("overlays/object-store", "PersistentVolumeClaim") == []
    assert "emptyDir" in {v["name"]: v for v in pod["volumes"]}["model-store"]
    sync = {c["name"]: c for c in pod["initContainers"] + pod["containers"]}
    once, every = sync["model-store-init"], sync["model-store-sync"]
    assert once["command"] == every["command"] == ["sh", "/sync/sync.sh"]
    assert {e["name"]: e["value"] for e in every["env"]}["SYNC_INTERVAL_S"] != "0"
    assert "SYNC_INTERVAL_S" not in {e["name"] for e in once["env"]}  # once, then exit
    store = str(app_settings(settings_of("overlays/object-store", deployment)).model_store)
    for container in (once, every):
        env = {e["name"]: e["value"] for e in container["env"]}
        assert env["MODEL_STORE"] == store
        writable = [m for m in container["volumeMounts"] if m["name"] == "model-store"]
        assert writable == [{"name": "model-store", "mountPath": store}]


STORAGE_SCHEMES = ("s3://", "gs://", "pvc://", "https://", "hf://", "oci://")
RAW_DEPLOYMENT = {"RawDeployment", "Standard"}  # Standard is KServe 0.16's new name for it


def test_kserve_runs_the_image_as_a_custom_predictor_on_its_storage() -> None:
    workload = the_workload("kserve")
    env = {e["name"]: e["value"] for e in workload.container["env"]}
    assert env["STORAGE_URI"].startswith(STORAGE_SCHEMES)
    assert app_settings(settings_of("kserve", workload)).model_store == Path("/mnt/models")
    assert workload.container["image"].split(":")[0].endswith("vae-serve")


def test_kserve_v2_serves_the_store_through_its_runtime_with_the_v2_protocol() -> None:
    (isvc,) = objects("kserve-v2", "InferenceService")
    annotations = isvc["metadata"]["annotations"]
    # Knative gives a revision one port; the gRPC port needs a plain Deployment.
    assert annotations["serving.kserve.io/deploymentMode"] in RAW_DEPLOYMENT
    model = isvc["spec"]["predictor"]["model"]
    assert model["protocolVersion"] == "v2"
    assert model["storageUri"].startswith(STORAGE_SCHEMES)
    runtime = runtimes("kserve-v2")[model["runtime"]]["spec"]
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["supportedModelFormats"]}
    assert {"v2", "grpc-v2"} <= set(runtime["protocolVersions"])
    assert runtime.get("multiModel", False) is False  # one store a pod, not ModelMesh
    workload = the_workload("kserve-v2")
    assert workload.container["name"] == KSERVE_CONTAINER
    assert workload.container["image"].split(":")[0].endswith("vae-serve")
    settings = app_settings(settings_of("kserve-v2", workload))
    assert settings.model_store == Path("/mnt/models")  # where KServe copies storageUri
    assert (settings.port, settings.grpc_port) == (8080, 8081)  # KServe's model server's
    assert settings.reload_interval_s == 0  # the copy never changes in a running pod


def test_queue_time_autoscaling_uses_a_metric_the_service_exports(mnist: np.ndarray) -> None:
    adapter = yaml.safe_load((DEPLOY / "overlays/queue-time/prometheus-adapter.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    (hpa,) = objects("overlays/queue-time", "HorizontalPodAutoscaler")
    (target,) = hpa["spec"]["metrics"]
    assert target["type"] == "Pods"
    assert target["pods"]["metric"]["name"] == rule["name"]["as"]

    settings = Settings(model_store=ROOT / "model_store", device="cpu", reload_interval_s=0)
    app = create_app(settings)
    with TestClient(app) as client:
        assert client.portal is not None
        client.portal.call(app.state.registry.loaded_once.wait)
        body, headers = npy(mnist[:2]), {"content-type": "application/x-npy"}
        assert client.post("/encode", content=body, headers=headers).status_code == 200
        text = client.get("/metrics").text
    # A histogram: its _sum and _count are counters, which rate() turns into a mean
    # that falls as the load does (a raw total only ever grows: TorchServe #3286).
    assert "# TYPE vae_batch_queue_wait_seconds histogram" in text
    for series in ("_sum", "_count"):
        name = "vae_batch_queue_wait_seconds" + series
        assert name in rule["seriesQuery"] + rule["metricsQuery"]
    assert metric(text, "vae_batch_queue_wait_seconds_count", model="mnist", graph="encoder") == 1


def test_compose_gives_the_drain_time_to_finish() -> None:
    defaults = Settings()
    for name, service in load_compose()["services"].items():
        if name.startswith("api"):
            seconds = int(service["stop_grace_period"].removesuffix("s"))
            assert seconds >= defaults.drain_s + defaults.shutdown_grace_s + SHUTDOWN_SPARE_S


def test_compose_publishes_the_http_and_grpc_ports_the_service_binds() -> None:
    host_defaults = []
    for name, service in load_compose()["services"].items():
        if not name.startswith("api"):
            continue
        settings = app_settings(service["environment"])
        published = [port.rsplit(":", 1) for port in service["ports"]]
        assert [int(inside) for _, inside in published] == [settings.port, settings.grpc_port]
        for host, _ in published:  # a variable with a default: API_PORT, API_GRPC_PORT, ...
            variable = re.fullmatch(r"\$\{API_\w*PORT:-(\d+)\}", host)
            assert variable, host
            host_defaults.append(variable[1])
    assert len(set(host_defaults)) == len(host_defaults), "two services, one host port"


# --- the object-store sync, run for real --------------------------------------------

SYNC = DEPLOY / "components/object-store/sync.sh"


def sync_env(remote: Path, store: Path, **more: str) -> dict[str, str]:
    return os.environ | {
        "MODEL_STORE_REMOTE": str(remote),
        "MODEL_STORE": str(store),
        "HOME": str(store.parent),  # rclone's config and cache folders
        **more,
    }


def test_object_store_sync_publishes_new_versions_to_running_pods(
    version_dir: Path, tmp_path: Path
) -> None:
    """sync.sh with rclone, a local folder standing in for the bucket: once (the init
    container), then every second (the sidecar) while a real service polls the store."""
    require(shutil.which("rclone") is not None, "rclone is not installed (Debian: rclone)")
    remote, store = tmp_path / "bucket", tmp_path / "pod" / "model_store"
    store.mkdir(parents=True)
    copy_version(version_dir, remote, 1)
    (remote / "mnist" / ".9.tmp-upload").mkdir()  # a half-published version: skipped
    once = subprocess.run(
        ["sh", SYNC], env=sync_env(remote, store), capture_output=True, text=True, timeout=60
    )
    assert once.returncode == 0, once.stderr
    assert once.stdout.splitlines() == ["published mnist/1"]
    assert sorted(p.name for p in (store / "mnist").iterdir()) == ["1"]

    with serve(store, tmp_path, VAE_RELOAD_INTERVAL_S="0.2") as server:
        sidecar = subprocess.Popen(
            ["sh", SYNC],
            env=sync_env(remote, store, SYNC_INTERVAL_S="1"),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            copy_version(version_dir, remote, 2)  # published to the bucket
            deadline = time.monotonic() + STARTUP_S
            with httpx.Client(base_url=server.url, timeout=10) as http:
                while [v["version"] for v in http.get("/models/mnist").json()["versions"]] != [
                    1,
                    2,
                ]:
                    assert time.monotonic() < deadline, server.log_tail()
                    time.sleep(0.2)  # the sidecar copies every 1 s, the service polls every 0.2 s
            sidecar.send_signal(signal.SIGTERM)
            output, _ = sidecar.communicate(timeout=30)
            assert sidecar.returncode == 0, output
            assert b"published mnist/2" in output
        finally:
            if sidecar.poll() is None:
                os.killpg(sidecar.pid, signal.SIGKILL)
                sidecar.wait(timeout=30)
    assert "refused" not in server.log.read_text(), "the service saw a half-copied version"


def test_object_store_sync_fails_the_init_container_when_the_remote_is_unreachable(
    tmp_path: Path,
) -> None:
    require(shutil.which("rclone") is not None, "rclone is not installed (Debian: rclone)")
    store = tmp_path / "model_store"
    store.mkdir()
    result = subprocess.run(
        ["sh", SYNC],
        env=sync_env(tmp_path / "no-such-bucket", store),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert list(store.iterdir()) == []
