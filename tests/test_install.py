"""The serving image's install steps, done for real in a fresh virtual environment.

What the Dockerfile's `build` stage does (copy the files it copies, `python -m venv`,
`pip install .` with no extras) and what README Quick start command 1 does: the
result must hold no torch (nor the documentation's tools), and `vae-serve` from it
must start and answer.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from containerfiles import ROOT, copy_sources, stage

from app.routes import page

STARTUP_S = 120  # a bound for a loaded 2-core machine, not a performance claim

Command = list[str | Path]


def probe(command: Command, cwd: Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command,
        cwd=cwd,
        env=clean_env(),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run(command: Command, cwd: Path, timeout: float = 600) -> str:
    result = probe(command, cwd, timeout)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{output[-4000:]}"
    return output


def clean_env(**settings: str) -> dict[str, str]:
    """This environment minus what would let the new venv see other packages."""
    hidden = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in hidden} | settings


def bundled_or_trained_store(request: pytest.FixtureRequest) -> Path:
    """The repository's model_store when it holds an mnist version, else conftest's tiny one.

    The tiny one is trained by the trainer (torch) in this test process, never in the
    serving venv; it stands in until the bundled model is committed.
    """
    bundled = ROOT / "model_store"
    if any(bundled.glob("mnist/[0-9]*/manifest.json")):
        return bundled
    store: Path = request.getfixturevalue("model_store")
    return store


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def serving_venv(tmp_path: Path) -> Path:
    """A venv with the serving install, made the way the image's `build` stage makes it."""
    build = stage("build")
    src = tmp_path / "src"
    src.mkdir()
    for source in copy_sources(build):
        origin = ROOT / source
        if origin.is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(origin, src / source, ignore=ignore)
        else:
            shutil.copy2(origin, src / source)
    assert any("pip install --no-cache-dir --no-compile . " in run for run in build.args("RUN"))
    venv = tmp_path / "venv"
    run([sys.executable, "-m", "venv", venv], cwd=tmp_path)
    # The pip cache stays on here (the image turns it off): it only makes this faster.
    run([venv / "bin" / "pip", "install", "."], cwd=src)
    return venv


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            status: int = response.status
            return status
    except urllib.error.HTTPError as error:
        return error.code


def poll(url: str, server: subprocess.Popen[bytes], log: Path, want: int | None) -> int:
    """GET url until it answers (with `want`, if given); fail if the server dies first."""
    deadline = time.monotonic() + STARTUP_S
    status = None
    while time.monotonic() < deadline:
        assert server.poll() is None, f"vae-serve exited {server.returncode}:\n{log.read_text()}"
        try:
            status = get(url)
        except (urllib.error.URLError, ConnectionError):
            status = None  # not listening yet
        if status is not None and (want is None or status == want):
            return status
        time.sleep(0.2)
    pytest.fail(f"{url} answered {status} after {STARTUP_S} s:\n{log.read_text()[-4000:]}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_serving_install_has_no_torch_and_serves(
    serving_venv: Path, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    python = serving_venv / "bin" / "python"
    no_torch = probe([python, "-c", "import torch"], tmp_path)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr
    # Neither the trainer's torch nor the documentation's tools (the dev extra).
    for package in ("torch", "mkdocs", "mkdocs-material"):
        show = probe([serving_venv / "bin" / "pip", "show", package], tmp_path)
        assert show.returncode != 0 and "not found" in show.stderr.lower(), show.stdout

    store = bundled_or_trained_store(request)
    port, grpc_port = free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    env = clean_env(
        VAE_HOST="127.0.0.1",
        VAE_PORT=str(port),
        VAE_GRPC_PORT=str(grpc_port),
        VAE_MODEL_STORE=str(store),
        VAE_DEVICE="cpu",
    )
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [serving_venv / "bin" / "vae-serve"],
            cwd=tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: nothing of it outlives the test
        )
    try:
        assert poll(f"{base}/healthz", server, log, want=None) == 200
        assert poll(f"{base}/readyz", server, log, want=200) == 200
        # The page's files are package data: a plain install serves them too.
        for path in ("/", *(f"/page/{name}" for name in page.FILES)):
            assert get(f"{base}{path}") == 200, path
        # The gRPC service too (its generated stubs import with the serving install's
        # grpcio and protobuf): ServerLive, an empty request, answers live = true.
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
            live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
            assert live(b"", timeout=30) == b"\x08\x01"
        # What `docker stop` sends: the lifespan runs to its end, then uvicorn exits
        # by re-raising the signal.
        os.killpg(server.pid, signal.SIGTERM)
        assert server.wait(timeout=30) in {0, -signal.SIGTERM}, log.read_text()[-4000:]
        assert "Application shutdown complete" in log.read_text()
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=30)
