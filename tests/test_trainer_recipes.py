"""Small real runs of the trainer's recipes, end to end: a conv model, the iwae objective,
KL warm-up, and an RGB model trained on a folder of real photos with nothing but
--data and --out (so a conv net with a discretised logistic likelihood), served by a
real vae-serve whose answers equal the ONNX files run directly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import onnxruntime as ort
import pytest
from app_support import npy, read_mnist, serve
from PIL import Image
from skimage import data as photos

from trainer.train import main as train_main

# Seconds on 2 cores: a tiny network, a few dozen steps, a small evaluation.
QUICK = ["--batch-size", "64", "--eval-k", "4", "--eval-limit", "100", "--no-report"]
QUICK += ["--threads", "2", "--latent-dim", "8"]
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")


def digits_npz(folder: Path, n: int = 1200) -> Path:
    """n real MNIST digits as an .npz: a data set small enough for seconds of training."""
    path = folder / "digits.npz"
    np.savez(path, x=read_mnist(n))
    return path


def trained(tmp_path: Path, data: Path, *args: str) -> dict[str, Any]:
    """Train into tmp_path/store/m; the manifest of version 1 and the run's metrics lines."""
    argv = ["--data", str(data), "--out", str(tmp_path / "store" / "m")]
    argv += ["--checkpoint-dir", str(tmp_path / "run"), *args]
    assert train_main(argv) == 0
    manifest = json.loads((tmp_path / "store" / "m" / "1" / "manifest.json").read_text())
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return {"manifest": manifest, "metrics": [json.loads(line) for line in lines]}


@pytest.mark.slow
def test_conv_model_trains_and_exports(tmp_path: Path) -> None:
    # Narrow widths: transposed convolutions are slow on 2 shared cores.
    args = ["--architecture", "conv", "--hidden", "8", "16", "32", "--max-steps", "10", *QUICK]
    run = trained(tmp_path, digits_npz(tmp_path), *args)
    training = run["manifest"]["training"]
    assert training["architecture"] == "conv" and training["hidden"] == [8, 16, 32]
    assert training["likelihood"] == "bernoulli" and training["binarize"] is True  # MNIST
    assert run["manifest"]["graphs"]["decoder"]["outputs"] == {"logits": ["batch", 1, 28, 28]}
    assert -550 < run["manifest"]["metrics"]["test"]["elbo"] < 0


@pytest.mark.slow
def test_iwae_objective_trains_a_bound_above_the_elbo(tmp_path: Path) -> None:
    args = ["--objective", "iwae", "--iw-k", "4", "--hidden", "64", "--epochs", "2", *QUICK]
    run = trained(tmp_path, digits_npz(tmp_path), *args)
    training = run["manifest"]["training"]
    assert training["objective"] == "iwae" and training["iw_k"] == 4
    test = run["manifest"]["metrics"]["test"]
    assert test["elbo"] <= test["log_likelihood"] < 0  # k = 4 importance samples: tighter
    epochs = run["metrics"]
    assert [line["epoch"] for line in epochs] == [1, 2]
    assert epochs[1]["validation_elbo"] > epochs[0]["validation_elbo"]  # it learns


@pytest.mark.slow
def test_kl_warm_up_raises_the_kl_weight_to_one(tmp_path: Path) -> None:
    # 960 training images, batch 64: 15 steps an epoch; the KL weight reaches 1 at step 30.
    args = ["--validation", "120", "--test-fraction", "0.1", "--warmup-epochs", "2"]
    args += ["--epochs", "3", "--hidden", "32", *QUICK]
    run = trained(tmp_path, digits_npz(tmp_path), *args)
    betas = [line["beta"] for line in run["metrics"]]
    # Each line holds the weight of the epoch's last step: 14/30 and 29/30, then 1.
    assert betas == pytest.approx([14 / 30, 29 / 30, 1.0])
    assert run["manifest"]["training"]["warmup_epochs"] == 2.0


def photo_crops(folder: Path, n: int = 360, size: int = 16) -> Path:
    """n RGB crops of size×size from scikit-image's bundled colour photos, as PNG files."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    for i in range(n):
        photo = Image.fromarray(getattr(photos, PHOTOS[i % len(PHOTOS)])())
        photo = photo.reduce(4)  # whole objects in a crop, not single textures
        left = int(rng.integers(0, photo.width - size))
        top = int(rng.integers(0, photo.height - size))
        photo.crop((left, top, left + size, top + size)).save(folder / f"{i:04d}.png")
    return folder


def _sigmoid(t: np.ndarray) -> np.ndarray:
    return 1 / (1 + np.exp(-t))


def _discretized_logistic(x: np.ndarray, logits: np.ndarray) -> np.ndarray:
    """log P(x) per value, written from the definition: the logistic's mass on the
    8-bit value's bin of [-1, 1], the end bins reaching to infinity. (N, 2C, H, W)."""
    location, log_scale = np.split(logits.astype(np.float64), 2, axis=1)
    s = np.exp(np.maximum(log_scale, -7.0))
    value = np.rint(x * 255)
    centre = 2 * value / 255 - 1
    upper = np.where(value == 255, 1.0, _sigmoid((centre + 1 / 255 - location) / s))
    lower = np.where(value == 0, 0.0, _sigmoid((centre - 1 / 255 - location) / s))
    return np.log(upper - lower)


def _dl_mean(logits: np.ndarray) -> np.ndarray:
    """E[x|z] by brute force over the 256 values: (N, 2C, H, W) -> (N, C, H, W)."""
    total = np.zeros(logits[:, : logits.shape[1] // 2].shape)
    for value in range(256):
        x = np.full(total.shape, value / 255)
        total += value / 255 * np.exp(_discretized_logistic(x, logits))
    return total


@pytest.mark.slow
def test_rgb_photos_train_with_settled_defaults_and_are_served_exactly(tmp_path: Path) -> None:
    folder = photo_crops(tmp_path / "photos")
    # Narrow conv widths: the architecture itself is the data's choice.
    args = ["--hidden", "8", "16", "32", "--epochs", "2", "--validation", "0.15", *QUICK]
    run = trained(tmp_path, folder, *args)  # no --channels, --likelihood or --image-size
    manifest = run["manifest"]
    training = manifest["training"]
    assert manifest["input"] == {"channels": 3, "height": 16, "width": 16}
    assert manifest["likelihood"] == "discretized_logistic" and training["binarize"] is False
    assert training["architecture"] == "conv"
    assert manifest["graphs"]["decoder"]["outputs"] == {"logits": ["batch", 6, 16, 16]}
    # A probability of each 8-bit value: bits/dim are positive (a continuous Bernoulli's
    # are negative on photos). Two epochs of a tiny net come near 8, the raw bytes' cost.
    assert 0 < manifest["metrics"]["test"]["bits_per_dim_elbo"] < 12
    assert training["data"]["sha256_of"] == "listing"
    assert (training["data"]["n_train"], training["data"]["n_validation"]) == (275, 49)

    version = tmp_path / "store" / "m" / "1"
    cpu = ["CPUExecutionProvider"]
    encoder = ort.InferenceSession(str(version / "encoder.onnx"), providers=cpu)
    decoder = ort.InferenceSession(str(version / "decoder.onnx"), providers=cpu)
    names = sorted(folder.iterdir())[:5]
    images = np.stack([np.asarray(Image.open(p)).transpose(2, 0, 1) for p in names])  # uint8
    x = images.astype(np.float32) / np.float32(255)
    mean, log_var = encoder.run(["mean", "log_var"], {"x": x})

    with serve(tmp_path / "store", tmp_path, VAE_DEFAULT_MODEL="m") as server:
        headers = {"Content-Type": "application/x-npy"}
        encoded = httpx.post(f"{server.url}/encode", content=npy(images), headers=headers)
        assert encoded.status_code == 200, encoded.text
        results = encoded.json()["results"]
        np.testing.assert_allclose([r["mean"] for r in results], mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose([r["log_var"] for r in results], log_var, rtol=1e-5, atol=1e-5)

        sampled = httpx.get(f"{server.url}/sample", params={"n": 3, "seed": 7, "format": "json"})
        assert sampled.status_code == 200, sampled.text
        z = np.asarray(sampled.json()["z"], np.float32)
        (logits,) = decoder.run(["logits"], {"z": z})
        # The service's means are the clipped logistic's: within half a level of the
        # discretised distribution's own mean.
        np.testing.assert_allclose(sampled.json()["pixels"], _dl_mean(logits), atol=0.5 / 255)

        scored = httpx.post(f"{server.url}/elbo", content=npy(images), headers=headers)
        assert scored.status_code == 200, scored.text
        body = scored.json()
        assert (body["k"], body["seed"]) == (1, 0)
        mapped = httpx.post(
            f"{server.url}/elbo/map",
            params={"format": "json"},
            content=npy(images),
            headers=headers,
        )
        assert mapped.status_code == 200, mapped.text
    # The map's nats by hand: -log P(x_i|z) at z = mean, summed over the channels.
    (at_mean,) = decoder.run(["logits"], {"z": mean})
    want = -_discretized_logistic(x, at_mean).sum(axis=1)
    np.testing.assert_allclose(mapped.json()["nats"], want, rtol=1e-4, atol=1e-4)
    assert np.isfinite(mapped.json()["deviation"]).all()
    # The ELBO by hand: the service's noise (seed 0), the discretised logistic.
    eps = np.random.default_rng(0).standard_normal((1, manifest["latent_dim"]), np.float32)
    z = (mean + np.exp(0.5 * log_var) * eps).astype(np.float32)
    (logits,) = decoder.run(["logits"], {"z": z})
    reconstruction = _discretized_logistic(x, logits).reshape(5, -1).sum(axis=1)
    m, lv = mean.astype(np.float64), log_var.astype(np.float64)
    kl = 0.5 * (np.exp(lv) + m**2 - 1 - lv).sum(axis=1)
    got = body["results"]
    np.testing.assert_allclose([r["reconstruction"] for r in got], reconstruction, rtol=1e-5)
    np.testing.assert_allclose([r["kl"] for r in got], kl, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["elbo"] for r in got], reconstruction - kl, rtol=1e-5)
