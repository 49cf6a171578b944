"""The Kubernetes and KServe manifests in deploy/, rendered and validated offline.

Every kustomization renders with kubectl's own kustomize, and every object it renders
validates strictly (unknown fields are errors) against the Kubernetes schemas of the
oldest and the newest Kubernetes that kubernetes-validate knows. Two things are not
Kubernetes objects and get their own checks: the InferenceService is a KServe CRD
(its predictor is a pod spec, validated as a Pod; its KServe fields are checked by
name), and prometheus-adapter's rules are Helm values (their metric is checked
against what the service exports). Then the manifests are held to the code: ports,
probe paths, setting names and values, the drain, the security context.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import signal
import subprocess
import time
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

from app.config import Settings
from app.main import create_app

DEPLOY = ROOT / "deploy"
KUSTOMIZATIONS = [
    "overlays/cpu",
    "overlays/gpu",
    "overlays/object-store",
    "overlays/queue-time",
    "kserve",
]
K8S_VERSIONS = ["1.30.0", kubernetes_validate.latest_version()]
SERVING_CONTAINERS = {"vae-serve", "kserve-container"}
# The drain ends within VAE_DRAIN_S + VAE_SHUTDOWN_GRACE_S; then the lifespan stops
# the batchers. The kill deadline leaves this much for that.
SHUTDOWN_SPARE_S = 5


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


# KServe's own fields of a predictor; everything else in it is a Kubernetes pod spec.
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "scaleTarget", "scaleMetric"}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    """The pod spec of a Deployment, or of an InferenceService's predictor."""
    if workload["kind"] == "InferenceService":
        predictor = workload["spec"]["predictor"]
        return {k: v for k, v in predictor.items() if k not in KSERVE_PREDICTOR_FIELDS}
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def as_validated(obj: dict[str, Any]) -> dict[str, Any]:
    """What kubernetes-validate can check: the object, or a CRD's pod spec as a Pod."""
    if obj["kind"] != "InferenceService":
        return obj
    assert obj["apiVersion"] == "serving.kserve.io/v1beta1"
    assert set(obj["spec"]) == {"predictor"}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": obj["metadata"], "spec": pod_spec(obj)}


def workloads(path: str) -> list[dict[str, Any]]:
    return objects(path, "Deployment") + objects(path, "InferenceService")


def serving_container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = [c for c in pod_spec(workload)["containers"] if c["name"] in SERVING_CONTAINERS]
    return container


def settings_of(path: str, workload: dict[str, Any]) -> dict[str, str]:
    """The VAE_* variables the serving container gets: ConfigMaps, then env values."""
    container = serving_container(workload)
    maps = {m["metadata"]["name"]: m.get("data", {}) for m in objects(path, "ConfigMap")}
    values: dict[str, str] = {}
    for source in container.get("envFrom", []):
        values |= maps[source["configMapRef"]["name"]]
    values |= {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
    return {k: v for k, v in values.items() if k.startswith("VAE_")}


def app_settings(values: dict[str, str]) -> Settings:
    """The service's own parsing of those variables: unknown names and bad values fail."""
    fields = {name.removeprefix("VAE_").lower(): value for name, value in values.items()}
    unknown = set(fields) - set(Settings.model_fields)
    assert not unknown, f"not settings of the service: {sorted(unknown)}"
    return Settings(**fields)


# --- rendering and schemas --------------------------------------------------------


def test_the_readmes_deploy_commands_are_the_ones_checked_here() -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("\n## Deploy\n", 1)[1].split("\n## ", 1)[0]
    applied = set(re.findall(r"kubectl (?:apply -k|kustomize) deploy/([\w/-]+)", section))
    assert applied == set(KUSTOMIZATIONS)
    for path in re.findall(r"`(deploy/[\w./-]+)`", section):
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
    for obj in rendered(path):
        kubernetes_validate.validate(as_validated(obj), version, strict=True)


def test_strict_validation_refuses_a_misspelt_field() -> None:
    (deployment,) = objects("overlays/cpu", "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError, match="readinesProbe"):
        kubernetes_validate.validate(deployment, K8S_VERSIONS[-1], strict=True)


def test_the_kserve_pod_spec_is_validated_too() -> None:
    (isvc,) = objects("kserve", "InferenceService")
    isvc["spec"]["predictor"]["containers"][0]["portz"] = []
    with pytest.raises(kubernetes_validate.ValidationError, match="portz"):
        kubernetes_validate.validate(as_validated(isvc), K8S_VERSIONS[-1], strict=True)


# --- held to the code -------------------------------------------------------------------


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_settings_are_real_settings_with_valid_values(path: str) -> None:
    for workload in workloads(path):
        values = settings_of(path, workload)
        settings = app_settings(values)
        assert settings.host == "0.0.0.0"
        mounts = {m["mountPath"]: m for m in serving_container(workload)["volumeMounts"]}
        if workload["kind"] != "InferenceService":  # KServe mounts /mnt/models itself
            store = mounts[str(settings.model_store)]
            assert store.get("readOnly") is True, "the service only reads the store"
        assert "/tmp" in mounts, "multipart uploads spool to /tmp: give it a writable one"


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_ports_and_probes_are_the_services(path: str) -> None:
    routes = set(create_app(Settings()).openapi()["paths"])
    for workload in workloads(path):
        container = serving_container(workload)
        port = app_settings(settings_of(path, workload)).port
        (declared,) = container["ports"]
        assert declared["containerPort"] == port
        names = {declared.get("name"), port}
        probes = {kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "readiness")}
        probes["liveness"] = container["livenessProbe"]["httpGet"]
        assert {kind: p["path"] for kind, p in probes.items()} == {
            "startup": "/readyz",
            "readiness": "/readyz",
            "liveness": "/healthz",
        }
        assert all(p["path"] in routes and p["port"] in names for p in probes.values())
        for service in objects(path, "Service"):
            assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_termination_grace_covers_the_drain(path: str) -> None:
    for workload in workloads(path):
        settings = app_settings(settings_of(path, workload))
        grace = pod_spec(workload)["terminationGracePeriodSeconds"]
        assert grace >= settings.drain_s + settings.shutdown_grace_s + SHUTDOWN_SPARE_S
        # Load balancers that go by readiness see the 503 within the drain window.
        readiness = serving_container(workload)["readinessProbe"]
        assert readiness["periodSeconds"] * readiness["failureThreshold"] <= settings.drain_s


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_containers_are_locked_down_and_sized(path: str) -> None:
    user = stage("serve").args("USER")[-1].split(":")[0]
    for workload in workloads(path):
        pod = pod_spec(workload)
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
        assert threads == int(serving_container(workload)["resources"]["limits"]["cpu"])


def test_the_gpu_overlay_runs_the_gpu_image_on_one_gpu() -> None:
    (deployment,) = objects("overlays/gpu", "Deployment")
    container = serving_container(deployment)
    assert container["image"].split(":")[0].endswith("vae-serve-gpu")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert app_settings(settings_of("overlays/gpu", deployment)).device == "cuda"
    (cpu,) = objects("overlays/cpu", "Deployment")
    assert serving_container(cpu)["image"].split(":")[0].endswith("vae-serve")


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
    volumes = {v["name"]: v for v in pod_spec(objects("overlays/cpu", "Deployment")[0])["volumes"]}
    assert volumes["model-store"]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert volumes["model-store"]["persistentVolumeClaim"]["readOnly"] is True

    (deployment,) = objects("overlays/object-store", "Deployment")
    pod = pod_spec(deployment)
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


def test_kserve_runs_the_image_as_a_custom_predictor_on_its_storage() -> None:
    (isvc,) = objects("kserve", "InferenceService")
    container = serving_container(isvc)
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"].startswith(("s3://", "gs://", "pvc://", "https://"))
    assert app_settings(settings_of("kserve", isvc)).model_store == Path("/mnt/models")
    assert container["image"].split(":")[0].endswith("vae-serve")


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
