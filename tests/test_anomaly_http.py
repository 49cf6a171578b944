"""Anomaly scores, calibrated thresholds and the error map, over HTTP (TestClient),
against the small model the real trainer exports (see conftest.py).

Expected values come from docs/manifest.md redone by hand (tests/app_support.py's
Reference, Pillow for the PNG code length) and from the trainer's own scoring
(trainer/scores.py, which shares vae_contract with the service), never from app/.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from app_support import MNIST_TEST_IMAGES, Reference, copy_version, npy
from fastapi.testclient import TestClient
from PIL import Image
from test_app_api import NPY, serving, settings_for

from trainer import data
from trainer.evaluate import Graphs
from trainer.scores import anomaly_scores

LARGE = {"max_k": 128, "max_images_per_request": 512, "max_body_bytes": 1 << 22}


@pytest.fixture(scope="module")
def client(model_store: Path) -> Iterator[TestClient]:
    with serving(settings_for(model_store, **LARGE)) as client:
        yield client


@pytest.fixture(scope="module")
def ref(version_dir: Path) -> Reference:
    return Reference(version_dir)


@pytest.fixture(scope="module")
def validation(version_dir: Path, ref: Reference) -> np.ndarray:
    """The held-out images the model's calibration was measured on, uint8 (N, 28, 28)."""
    _, held_out, _ = data.as_trained(str(MNIST_TEST_IMAGES.parent), ref.manifest["training"])
    return held_out[:, 0]


def png_bits(image: np.ndarray) -> float:
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=9)
    return 8.0 * len(out.getvalue())


def post(client: TestClient, query: str, images: np.ndarray) -> dict[str, Any]:
    response = client.post(f"/elbo?{query}", content=npy(images), headers=NPY)
    assert response.status_code == 200, response.text
    payload: dict[str, Any] = response.json()
    return payload


def test_complexity_is_the_elbo_minus_the_png_code_length(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    images = mnist[:6]
    rows = post(client, "score=complexity", images)["results"]
    elbo = ref.elbo(ref.x(images))["elbo"]
    for row, image, want in zip(rows, images, elbo, strict=True):
        assert row["complexity_bits"] == png_bits(image)
        assert row["elbo"] == pytest.approx(want, abs=1e-3)
        assert row["anomaly_score"] == pytest.approx(
            -want - math.log(2) * png_bits(image), abs=1e-3
        )


def test_iwae_is_scored_at_its_calibrated_k(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    calibrated = ref.manifest["calibration"]["scores"]["iwae"]["k"]
    payload = post(client, "score=iwae", mnist[:3])
    assert (payload["score"], payload["k"]) == ("iwae", calibrated)
    want = ref.elbo(ref.x(mnist[:3]), k=calibrated)["elbo"]
    for row, bound in zip(payload["results"], want, strict=True):
        assert row["elbo"] == pytest.approx(bound, abs=1e-3)
        assert row["anomaly_score"] == -row["elbo"]
        assert row["complexity_bits"] is None


@pytest.mark.parametrize("score", ["iwae", "complexity"])
def test_each_score_is_thresholded_by_its_own_calibration(
    client: TestClient, ref: Reference, mnist: np.ndarray, score: str
) -> None:
    calibration = ref.manifest["calibration"]
    levels, quantiles = calibration["levels"], calibration["scores"][score]["quantiles"]
    for fpr in (0.01, 0.2):
        payload = post(client, f"score={score}&fpr={fpr}", mnist[:8])
        limit = float(np.interp(1 - fpr, levels, quantiles))
        assert payload["anomaly_threshold"] == pytest.approx(limit)
        assert payload["threshold"] is None  # the ELBO threshold belongs to score=elbo
        for row in payload["results"]:
            assert row["is_anomaly"] == (row["anomaly_score"] > payload["anomaly_threshold"])
            below = float(np.interp(row["anomaly_score"], quantiles, levels))
            assert row["percentile"] == pytest.approx(100 * (1 - below))


def test_elbo_keeps_its_threshold_and_gains_the_anomaly_threshold(
    client: TestClient, mnist: np.ndarray
) -> None:
    payload = post(client, "fpr=0.05", mnist[:4])
    assert payload["anomaly_threshold"] == -payload["threshold"]
    for row in payload["results"]:
        assert row["is_anomaly"] == (row["elbo"] < payload["threshold"])


@pytest.mark.parametrize("score", ["elbo", "iwae", "complexity"])
def test_about_fpr_of_the_held_out_normal_images_are_flagged(
    client: TestClient, validation: np.ndarray, score: str
) -> None:
    """The calibration's promise, end to end: the trainer measured these very images."""
    for fpr in (0.1, 0.5):
        rows = post(client, f"score={score}&fpr={fpr}", validation)["results"]
        flagged = np.mean([row["is_anomaly"] for row in rows])
        assert flagged == pytest.approx(fpr, abs=0.01)


def test_the_trainer_and_the_service_compute_the_same_scores(
    client: TestClient, version_dir: Path, ref: Reference, mnist: np.ndarray
) -> None:
    """The contract: calibration and evaluation (trainer) score exactly as /elbo does."""
    images = mnist[:16]
    graphs = Graphs(version_dir)
    trained = anomaly_scores(graphs, ref.manifest["likelihood"], images[:, None], k=8)
    for score, k in (("elbo", 1), ("iwae", 8), ("complexity", 1)):
        served = [
            r["anomaly_score"] for r in post(client, f"score={score}&k={k}", images)["results"]
        ]
        np.testing.assert_allclose(served, trained[score], rtol=1e-5, atol=1e-3)


def test_a_version_without_score_calibrations_still_scores(
    store_copy: Path, version_dir: Path, mnist: np.ndarray
) -> None:
    manifest = json.loads((version_dir / "manifest.json").read_text())
    old = {key: v for key, v in manifest["calibration"].items() if key != "scores"}
    copy_version(version_dir, store_copy, 2, calibration=old)
    copy_version(version_dir, store_copy, 3, calibration=None)
    with serving(settings_for(store_copy)) as client:
        payload = post(client, "version=2&score=complexity", mnist[:2])
        assert (payload["threshold"], payload["anomaly_threshold"]) == (None, None)
        for row in payload["results"]:
            assert row["anomaly_score"] > -1e9  # computed all the same
            assert (row["percentile"], row["is_anomaly"]) == (None, None)
        assert post(client, "version=2", mnist[:2])["threshold"] is not None
        assert post(client, "version=3", mnist[:2])["anomaly_threshold"] is None


def test_unknown_score_is_a_422(client: TestClient, mnist: np.ndarray) -> None:
    response = client.post("/elbo?score=likelihood-ratio", content=npy(mnist[:1]), headers=NPY)
    assert response.status_code == 422
    assert "'elbo', 'iwae' or 'complexity'" in response.text


# -- /elbo/map -----------------------------------------------------------------------------


def panels(png: bytes, zoom: int) -> np.ndarray:
    """The map PNG -> (rows, 3 panels, 28, 28, RGB) at one pixel per image pixel."""
    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))[::zoom, ::zoom]
    rows = image.shape[0] // 28
    return image.reshape(rows, 28, 3, 28, 3).transpose(0, 2, 1, 3, 4)


def test_map_is_a_png_of_input_reconstruction_and_heat_per_image(
    client: TestClient, mnist: np.ndarray
) -> None:
    response = client.post("/elbo/map?zoom=3", content=npy(mnist[:2]), headers=NPY)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert (image.mode, image.size) == ("RGB", (3 * 28 * 3, 2 * 28 * 3))
    got = panels(response.content, 3)
    np.testing.assert_array_equal(got[:, 0, :, :, 0], mnist[:2])  # the inputs, untouched


def test_the_map_lights_up_where_the_digit_was_corrupted(
    client: TestClient, mnist: np.ndarray
) -> None:
    clean = mnist[:4].copy()
    corrupted = clean.copy()
    corrupted[:, 2:10, 18:26] = 255  # a white square in the top-right corner, off the digit
    square = np.zeros((28, 28), bool)
    square[2:10, 18:26] = True
    response = client.post("/elbo/map?zoom=1", content=npy(np.r_[clean, corrupted]), headers=NPY)
    assert response.status_code == 200, response.text
    heat = panels(response.content, 1)[:, 2].astype(float).sum(axis=-1)  # (8, 28, 28)
    # The heat the corruption added: in the square, and (nearly) nowhere else.
    for added in heat[4:] - heat[:4]:
        assert added[square].mean() > 30  # of 765: brighter on the colour scale
        assert added[square].mean() > 5 * np.abs(added[~square]).mean()


def test_map_refuses_bad_input_like_elbo(client: TestClient) -> None:
    response = client.post("/elbo/map", content=npy(np.zeros((1, 32, 32), np.uint8)), headers=NPY)
    assert response.status_code == 422
    assert "32×32" in response.json()["detail"]
