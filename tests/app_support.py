"""Helpers for the service's tests: real MNIST images, request bodies, and an
independent reference for what the service computes (numpy + onnxruntime,
straight from docs/manifest.md, sharing no code with app/)."""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from trainer import store  # torch-free: the store's layout, written once

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
MNIST_TEST_IMAGES = SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz"

# Set by .ci/run, which installs every system tool the tests use (.ci/system).
IN_CI = os.environ.get("VAE_CI") == "1"
BUNDLED_STORE = ROOT / "model_store"


def bundled_version(name: str = "mnist") -> int:
    """The newest version of a bundled model: the one the service serves unpinned."""
    return store.versions(BUNDLED_STORE / name)[-1]


def require(available: bool, reason: str) -> None:
    """Skip a test whose system tool is missing here, but fail it in CI: there a
    skip would hide a broken image, page or benchmark."""
    if available:
        return
    if IN_CI:
        pytest.fail(f"{reason}; .ci/system installs it for CI")
    pytest.skip(reason)


# A model trained for seconds: enough to have real graphs and a real manifest.
TINY_MODEL = [
    "--architecture", "mlp", "--hidden", "32", "--latent-dim", "8", "--epochs", "1",
    "--max-steps", "30", "--batch-size", "128", "--eval-k", "2", "--eval-limit", "100",
    "--validation", "2000", "--no-report", "--threads", "2",
]  # fmt: skip


def read_mnist(n: int) -> np.ndarray:
    """The first n MNIST test images, uint8 (n, 28, 28), from the IDX file (big-endian header)."""
    raw = gzip.decompress(MNIST_TEST_IMAGES.read_bytes())
    magic, count, rows, cols = np.frombuffer(raw[:16], dtype=">u4")
    assert magic == 2051 and n <= count, f"{MNIST_TEST_IMAGES} is not an IDX image file"
    return np.frombuffer(raw, np.uint8, n * rows * cols, offset=16).reshape(n, rows, cols)


def npy(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=False)
    return out.getvalue()


def image_file(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    """uint8 (H, W) or (H, W, C) -> an image file's bytes."""
    image = Image.fromarray(pixels)
    if mode is not None:
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def copy_version(src: Path, store: Path, version: int, **manifest_changes: Any) -> Path:
    """Publish a copy of a version folder as `version`, editing its manifest.

    Like the trainer, it stages the copy in a hidden folder and renames it into
    place, so a server polling the store never sees half of it.
    """
    staged = store / src.parent.name / f".{version}.tmp-test"
    shutil.copytree(src, staged)
    manifest = json.loads((staged / "manifest.json").read_text())
    manifest.update({"version": version, **manifest_changes})
    (staged / "manifest.json").write_text(json.dumps(manifest))
    return staged.rename(staged.parent / str(version))


def metric(text: str, name: str, **labels: str) -> float:
    """A sample's value in Prometheus text, 0.0 if absent: metric(text, "x_count", model="m")."""
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                return float(sample.value)
    return 0.0


class Reference:
    """The service's maths redone by hand from the two ONNX files and the manifest."""

    def __init__(self, version_dir: Path) -> None:
        self.manifest = json.loads((version_dir / "manifest.json").read_text())
        cpu = ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(version_dir / "encoder.onnx"), providers=cpu)
        self.decoder = ort.InferenceSession(str(version_dir / "decoder.onnx"), providers=cpu)
        self.latent_dim: int = self.manifest["latent_dim"]

    def x(self, images: np.ndarray) -> np.ndarray:
        """uint8 (N, H, W) -> float32 (N, 1, H, W) / scale, as the manifest says."""
        scale = np.float32(self.manifest["preprocessing"]["scale"])
        return images[:, None].astype(np.float32) / scale

    def encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        mean, log_var = self.encoder.run(["mean", "log_var"], {"x": x})
        return mean, log_var

    def elbo(self, x: np.ndarray, k: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
        """Per image: the ELBO (k = 1) or IWAE bound, E_q log p(x|z) and the KL."""
        assert self.manifest["likelihood"] == "bernoulli"
        results: dict[str, list[float]] = {"elbo": [], "reconstruction": [], "kl": []}
        for image in x:
            mean, log_var = (a[0] for a in self.encode(image[None]))
            eps = np.random.default_rng(seed).standard_normal((k, self.latent_dim), np.float32)
            z = mean + np.exp(0.5 * log_var) * eps  # (k, L), float32 like the service
            (logits,) = self.decoder.run(["logits"], {"z": z})
            l64, x64 = logits.reshape(k, -1).astype(np.float64), image.reshape(1, -1)
            log_px = (x64 * l64 - np.logaddexp(0.0, l64)).sum(axis=1)  # (k,)
            m, lv, z64 = mean.astype(np.float64), log_var.astype(np.float64), z.astype(np.float64)
            kl = 0.5 * float(np.sum(np.exp(lv) + m**2 - 1.0 - lv))
            if k == 1:
                bound = float(log_px[0]) - kl
            else:
                log_p_z = -0.5 * np.sum(z64**2 + math.log(2 * math.pi), axis=1)
                log_q_z = -0.5 * np.sum(
                    (z64 - m) ** 2 / np.exp(lv) + lv + math.log(2 * math.pi), axis=1
                )
                log_w = log_px + log_p_z - log_q_z
                bound = float(np.log(np.mean(np.exp(log_w - log_w.max()))) + log_w.max())
            results["elbo"].append(bound)
            results["reconstruction"].append(float(log_px.mean()))
            results["kl"].append(kl)
        return {key: np.asarray(values) for key, values in results.items()}


STARTUP_S = 120  # a bound for a loaded 2-core machine, not a performance claim


@dataclass
class Server:
    url: str
    store: Path
    log: Path
    process: subprocess.Popen[bytes]

    def log_tail(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@dataclass(frozen=True)
class Served:
    """A server with the protocol's gRPC half on too."""

    server: Server
    grpc: str  # host:port

    @property
    def http(self) -> str:
        return self.server.url.removeprefix("http://")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until_ready(url: str, running: Callable[[], bool], log: Callable[[], str]) -> None:
    """Poll {url}/readyz (bounded); fail at once, with the log, if the server stops running."""
    deadline = time.monotonic() + STARTUP_S
    last = "no answer"
    while time.monotonic() < deadline:
        assert running(), f"the server stopped:\n{log()}"
        try:
            response = httpx.get(f"{url}/readyz", timeout=5)
            if response.status_code == 200:
                return
            last = response.text
        except httpx.TransportError as error:
            last = repr(error)  # not listening yet
        time.sleep(0.2)
    pytest.fail(f"not ready after {STARTUP_S} s ({last}):\n{log()}")


@contextmanager
def serve(store: Path, cwd: Path, clean_log: bool = True, **settings: str) -> Iterator[Server]:
    """vae-serve on 127.0.0.1 and a free port, ready; stopped (SIGTERM, exit 0) after,
    unless the test stopped it itself; with no traceback in its log unless `clean_log`
    is False. No drain window unless asked: no load balancer here to tell."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAE_")} | {
        "VAE_MODEL_STORE": str(store),
        "VAE_HOST": "127.0.0.1",
        "VAE_PORT": str(port),
        "VAE_DEVICE": "cpu",
        "VAE_DRAIN_S": "0",
        "VAE_GRPC_PORT": "0",  # off unless a test asks (with a free port)
        **settings,
    }
    log = cwd / "server.log"
    script = Path(sys.executable).parent / "vae-serve"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [script],
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: nothing outlives the test
        )
    served = Server(f"http://127.0.0.1:{port}", store, log, process)
    try:
        wait_until_ready(served.url, lambda: process.poll() is None, served.log_tail)
        yield served
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
        assert process.wait(timeout=30) == 0, served.log_tail()
        if clean_log:
            assert "Traceback" not in log.read_text(errors="replace"), served.log_tail()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
