"""The Dockerfile and docker-compose.yml, checked without a Docker engine.

hadolint lints the Dockerfile, check-jsonschema validates the compose file against
the compose specification, and the rest asserts what the images and services
promise: no torch where we serve, a non-root user, a liveness healthcheck, a
read-only model store, a training profile and a GPU profile.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from containerfiles import (
    COMPOSE_FILE,
    DOCKERFILE,
    ROOT,
    build_chain,
    copy_sources,
    dockerfile_stages,
    exec_form,
    load_compose,
    stage,
    venv_tool,
)

SERVING_TARGETS = ["serve", "serve-gpu"]


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    # --failure-threshold style: any finding fails, not only warnings and errors.
    return subprocess.run(
        [venv_tool("hadolint"), "--no-color", "--failure-threshold", "style", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def compose_schema_check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", path],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


# --- hadolint ------------------------------------------------------------------


def test_hadolint_passes_on_the_dockerfile() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    ("old", "new", "finding"),
    [
        ("FROM ${PYTHON_IMAGE} AS serve\n", "FROM python AS serve\n", "DL3006"),
        (
            "RUN pip install --no-cache-dir --no-compile . ",
            "RUN cd /src && pip install --no-compile . ",
            "DL3003",
        ),
        (" --no-install-recommends", "", "DL3015"),
        ("USER 10001:10001\n", "USER root\n", "DL3002"),
        ("HEALTHCHECK ", "HEALTHCHEK ", "unexpected"),
    ],
    ids=["untagged-base", "cd-and-pip-cache", "apt-recommends", "root-user", "syntax-error"],
)
def test_hadolint_fails_on_a_broken_dockerfile(
    tmp_path: Path, old: str, new: str, finding: str
) -> None:
    text = DOCKERFILE.read_text()
    assert old in text, f"the Dockerfile no longer contains {old!r}: update this test"
    broken = tmp_path / "Dockerfile"
    broken.write_text(text.replace(old, new))
    result = hadolint(broken)
    assert result.returncode != 0
    assert finding in result.stdout + result.stderr


# --- the compose specification --------------------------------------------------


def test_compose_file_follows_the_compose_specification() -> None:
    result = compose_schema_check(COMPOSE_FILE)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_schema_check_passes_on_the_file_rewritten_unchanged(tmp_path: Path) -> None:
    # The broken copies below are written the same way: only the break makes them fail.
    copy = tmp_path / "docker-compose.yml"
    copy.write_text(yaml.safe_dump(load_compose(), sort_keys=False))
    result = compose_schema_check(copy)
    assert result.returncode == 0, result.stdout + result.stderr


def _misspelt_restart(compose: dict[str, Any]) -> None:
    compose["services"]["api"]["restat"] = compose["services"]["api"].pop("restart")


def _ports_not_a_list(compose: dict[str, Any]) -> None:
    compose["services"]["api"]["ports"] = {"host": 8000}


def _unknown_healthcheck_key(compose: dict[str, Any]) -> None:
    compose["services"]["api"]["healthcheck"] = {"intervall": "5s"}


def _unknown_top_level_key(compose: dict[str, Any]) -> None:
    compose["service"] = compose.pop("services")


@pytest.mark.parametrize(
    ("breaks", "offender"),
    [
        (_misspelt_restart, "'restat'"),
        (_ports_not_a_list, "$.services.api.ports"),
        (_unknown_healthcheck_key, "'intervall'"),
        (_unknown_top_level_key, "'service'"),
    ],
    ids=["service-key", "ports-type", "healthcheck-key", "top-level-key"],
)
def test_compose_schema_check_fails_on_a_broken_file(
    tmp_path: Path, breaks: Any, offender: str
) -> None:
    compose = load_compose()
    breaks(compose)
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(compose, sort_keys=False))
    result = compose_schema_check(broken)
    assert result.returncode != 0
    assert offender in result.stdout + result.stderr


# --- the Dockerfile's promises ----------------------------------------------------


def test_the_default_target_is_the_cpu_serving_image() -> None:
    _, stages = dockerfile_stages()
    assert stages[-1].name == "serve"


def test_base_images_are_pinned() -> None:
    global_args, stages = dockerfile_stages()
    for s in stages:
        tag = s.base.partition(":")[2]
        assert re.search(r"\d+\.\d+", tag), f"stage {s.name}: base {s.base!r} has no version tag"
    assert all(value for value in global_args.values()), global_args


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_serving_image_has_no_torch(target: str) -> None:
    for s in build_chain(target):
        for run in s.args("RUN"):
            assert "torch" not in run, f"stage {s.name} installs torch: {run}"
            assert "[train" not in run and "[dev" not in run, f"stage {s.name}: {run}"


@pytest.mark.parametrize("target", [*SERVING_TARGETS, "train"])
def test_image_runs_as_a_non_root_user(target: str) -> None:
    users = stage(target).args("USER")
    assert users, f"stage {target} sets no USER and so runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_serving_image_serves_the_bundled_store_on_all_interfaces(target: str) -> None:
    s = stage(target)
    env = " ".join(s.args("ENV")).split()
    assert "VAE_HOST=0.0.0.0" in env
    assert "VAE_MODEL_STORE=/model_store" in env
    assert "model_store /model_store" in s.args("COPY")
    assert exec_form(s.args("CMD")[-1]) == ["vae-serve"]


@pytest.mark.parametrize("target", SERVING_TARGETS)
def test_serving_image_healthcheck_probes_liveness(target: str) -> None:
    (healthcheck,) = stage(target).args("HEALTHCHECK")
    command = exec_form(healthcheck[healthcheck.index("CMD ") + len("CMD ") :])
    assert command[:2] == ["python", "-c"]
    assert "/healthz" in command[2]
    compile(command[2], "<healthcheck>", "exec")


def test_gpu_image_runs_onnxruntime_gpu_on_a_cuda_runtime() -> None:
    assert stage("serve-gpu").base.startswith("nvidia/cuda:")
    assert "-runtime-" in stage("serve-gpu").base
    runs = " ".join(run for s in build_chain("serve-gpu") for run in s.args("RUN"))
    assert '"./[gpu]"' in runs
    assert "pip uninstall --yes onnxruntime " in runs


# --- the compose file's promises ----------------------------------------------------


def _services() -> dict[str, Any]:
    services: dict[str, Any] = load_compose()["services"]
    return services


@pytest.mark.parametrize("name", ["api", "api-gpu"])
def test_api_mounts_the_model_store_read_only(name: str) -> None:
    service = _services()[name]
    mounts = [m for m in service["volumes"] if m["target"] == "/model_store"]
    assert mounts == [
        {"type": "bind", "source": "./model_store", "target": "/model_store", "read_only": True}
    ]
    assert service["environment"]["VAE_MODEL_STORE"] == "/model_store"


@pytest.mark.parametrize("name", ["api", "api-gpu"])
def test_api_has_a_healthcheck_restart_policy_and_environment(name: str) -> None:
    service = _services()[name]
    # The image's HEALTHCHECK (test_serving_image_healthcheck_probes_liveness) applies.
    assert "healthcheck" not in service
    assert service["restart"] in {"always", "unless-stopped", "on-failure"}
    env = service["environment"]
    assert env["VAE_HOST"] == "0.0.0.0"
    assert service["ports"][0].endswith(":" + env["VAE_PORT"])
    assert service["build"]["target"] in SERVING_TARGETS


def test_api_service_starts_without_a_profile() -> None:
    assert "profiles" not in _services()["api"]


def test_train_service_writes_a_new_version_behind_a_profile() -> None:
    train = _services()["train"]
    assert train["profiles"] == ["train"]
    assert train["build"]["target"] == "train"
    stage("train")
    assert train["command"] == ["vae-train", "--data", "/data/mnist", "--out", "/model_store/mnist"]
    mounts = {m["target"]: m for m in train["volumes"]}
    assert mounts["/data"]["source"] == "${DATA_DIR:-../shared/data}"
    assert mounts["/data"]["read_only"] is True
    assert mounts["/model_store"]["source"] == "./model_store"
    assert not mounts["/model_store"].get("read_only", False)


def test_gpu_profile_reserves_an_nvidia_device() -> None:
    gpu = [s for s in _services().values() if "gpu" in s.get("profiles", [])]
    assert gpu, "no service has the gpu profile"
    for service in gpu:
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any(d["driver"] == "nvidia" and "gpu" in d["capabilities"] for d in devices)
        assert service["build"]["target"] == "serve-gpu"
        assert service["environment"]["VAE_DEVICE"] == "cuda"


def test_compose_build_targets_exist_in_the_dockerfile() -> None:
    names = {s.name for s in dockerfile_stages()[1]}
    for service in _services().values():
        assert service["build"]["target"] in names
        assert service["build"]["context"] == "."


def test_dockerignore_lets_in_what_the_images_copy() -> None:
    # .dockerignore excludes everything (**) and lets back in what the stages COPY.
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    assert "**" in lines
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    for s in dockerfile_stages()[1]:
        for source in copy_sources(s):
            assert source.rstrip("/") in allowed, f"{s.name} copies {source}, not let in"
