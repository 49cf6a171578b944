"""Anomaly scores, calibrated thresholds and the error map, over HTTP (TestClient),
against the small model the real trainer exports (see conftest.py).

Expected values come from docs/manifest.md redone by hand (tests/app_support.py's
Reference, Pillow for the PNG code length, numpy for the Mahalanobis distance) and from
the trainer's own scoring (trainer/scores.py, which shares vae_contract with the
service), never from app/. The last tests measure the bundled models on real images.
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
from app_support import MNIST_TEST_IMAGES, ROOT, SHARED_DATA, Reference, copy_version, npy
from fastapi.testclient import TestClient
from PIL import Image
from test_app_api import NPY, serving, settings_for

from trainer import data
from trainer.anomaly import detection
from trainer.evaluate import Graphs
from trainer.scores import anomaly_scores
from vae_contract.manifest import Calibration

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


def entropy(image: np.ndarray) -> float:
    """Σ H(x_i) of a uint8 image, x = u / 255 in float32 as served, by the definition."""
    p = (image.astype(np.float32).ravel() / np.float32(255)).astype(np.float64)
    p = p[(p > 0) & (p < 1)]
    return float(-np.sum(p * np.log(p) + (1 - p) * np.log(1 - p)))


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


def test_typicality_is_the_default_and_the_mahalanobis_distance_of_the_statistics(
    client: TestClient, ref: Reference, mnist: np.ndarray
) -> None:
    images = mnist[:6]
    payload = post(client, "", images)
    assert (payload["score"], payload["k"], payload["calibration_problem"]) == (
        "typicality",
        1,
        None,
    )
    gaussian = ref.manifest["calibration"]["scores"]["typicality"]["gaussian"]
    assert gaussian["statistics"] == ["elbo", "kl", "complexity_bits", "pixel_entropy"]
    precision = np.linalg.inv(np.array(gaussian["covariance"]))
    want = ref.elbo(ref.x(images))
    for i, (row, image) in enumerate(zip(payload["results"], images, strict=True)):
        assert row["complexity_bits"] == png_bits(image)
        assert row["pixel_entropy"] == pytest.approx(entropy(image), rel=1e-9)
        stats = np.array([want["elbo"][i], want["kl"][i], png_bits(image), entropy(image)])
        centred = stats - np.array(gaussian["mean"])
        assert row["anomaly_score"] == pytest.approx(centred @ precision @ centred, rel=1e-6)


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
        assert row["complexity_bits"] is None and row["pixel_entropy"] is None


@pytest.mark.parametrize("score", ["typicality", "iwae", "complexity"])
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
    payload = post(client, "fpr=0.05&score=elbo", mnist[:4])
    assert payload["anomaly_threshold"] == -payload["threshold"]
    for row in payload["results"]:
        assert row["is_anomaly"] == (row["elbo"] < payload["threshold"])


@pytest.mark.parametrize("score", ["typicality", "elbo", "iwae", "complexity"])
def test_about_fpr_of_the_held_out_normal_images_are_flagged(
    client: TestClient, validation: np.ndarray, score: str
) -> None:
    """The calibration's promise, end to end: the trainer measured these very images
    (typicality's quantiles: the half of them its detector was not fitted on)."""
    images = validation[1::2] if score == "typicality" else validation
    for fpr in (0.1, 0.5):
        rows = [  # in requests of at most 500 images (the limit is 512)
            row
            for start in range(0, len(images), 500)
            for row in post(client, f"score={score}&fpr={fpr}", images[start : start + 500])[
                "results"
            ]
        ]
        flagged = np.mean([row["is_anomaly"] for row in rows])
        assert flagged == pytest.approx(fpr, abs=0.01)


def test_the_trainer_and_the_service_compute_the_same_scores(
    client: TestClient, version_dir: Path, ref: Reference, mnist: np.ndarray
) -> None:
    """The contract: calibration and evaluation (trainer) score exactly as /elbo does."""
    images = mnist[:16]
    graphs = Graphs(version_dir)
    calibration = Calibration.model_validate(ref.manifest["calibration"])
    trained = anomaly_scores(
        graphs, ref.manifest["likelihood"], images[:, None], k=8, calibration=calibration
    )
    assert set(trained) == {"typicality", "elbo", "iwae", "complexity"}
    for score, k in (("typicality", 1), ("elbo", 1), ("iwae", 8), ("complexity", 1)):
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
        assert "does not calibrate score=complexity" in payload["calibration_problem"]
        for row in payload["results"]:
            assert row["anomaly_score"] > -1e9  # computed all the same
            assert (row["percentile"], row["is_anomaly"]) == (None, None)
        # Without a fitted detector the default is elbo, as before typicality existed.
        default = post(client, "version=2", mnist[:2])
        assert (default["score"], default["calibration_problem"]) == ("elbo", None)
        assert default["threshold"] is not None
        assert post(client, "version=3", mnist[:2])["anomaly_threshold"] is None
        response = client.post(
            "/elbo?version=2&score=typicality", content=npy(mnist[:1]), headers=NPY
        )
        assert response.status_code == 422
        assert "mnist version 2: score=typicality needs the detector" in response.json()["detail"]
        (model,) = client.get("/models").json()["models"]
        versions = {v["version"]: v for v in model["versions"]}
        assert versions[1]["default_score"] == "typicality"
        assert all(s["calibrated"] for s in versions[1]["scores"].values())
        assert versions[2]["default_score"] == "elbo"
        elbo = {"k": 1, "calibrated": True, "problem": None, "min_fpr": 10 / 2000}
        assert versions[2]["scores"]["elbo"] == elbo  # 2,000 validation images back fpr 0.005
        assert "vae-calibrate" in versions[2]["scores"]["typicality"]["problem"]
        assert versions[3]["scores"]["elbo"]["problem"] == "the manifest has no calibration"


def test_a_calibration_the_service_cannot_reproduce_is_refused_with_the_reason(
    store_copy: Path, version_dir: Path, mnist: np.ndarray
) -> None:
    """PNG code lengths that differ from the calibration's (another zlib, say) void the
    thresholds of the scores made from them, and the service says so."""
    calibration = json.loads((version_dir / "manifest.json").read_text())["calibration"]
    for name in ("typicality", "complexity"):
        calibration["scores"][name]["compressor"]["probe"][1] += 16.0
        calibration["scores"][name]["compressor"]["zlib"] = "9.9.9-elsewhere"
    copy_version(version_dir, store_copy, 2, calibration=calibration)
    with serving(settings_for(store_copy)) as client:
        payload = post(client, "version=2", mnist[:3])
        assert payload["score"] == "typicality"
        problem = payload["calibration_problem"]
        assert "PNG code lengths here differ" in problem and "9.9.9-elsewhere" in problem
        assert payload["anomaly_threshold"] is None
        assert all(r["is_anomaly"] is None and r["percentile"] is None for r in payload["results"])
        assert all(r["anomaly_score"] >= 0 for r in payload["results"])  # still scored
        assert post(client, "version=2&score=elbo", mnist[:3])["calibration_problem"] is None
        assert post(client, "version=1", mnist[:3])["calibration_problem"] is None
        (model,) = client.get("/models").json()["models"]
        scores = {v["version"]: v["scores"] for v in model["versions"]}[2]
        assert scores["typicality"]["calibrated"] is False
        assert scores["complexity"]["problem"] == problem
        assert scores["iwae"]["calibrated"] is True


def test_unknown_score_is_a_422(client: TestClient, mnist: np.ndarray) -> None:
    response = client.post("/elbo?score=likelihood-ratio", content=npy(mnist[:1]), headers=NPY)
    assert response.status_code == 422
    assert "'typicality', 'elbo', 'iwae' or 'complexity'" in response.text


# -- the bundled models, on real images ----------------------------------------------------


def test_on_the_fashion_model_typicality_catches_digits_and_noise_where_each_score_fails_one() -> (
    None
):
    """The bundled fashion-mnist/1, 200 real test images of each: digits look *more*
    normal than clothes to elbo, noise looks normal to complexity (it cannot be
    compressed); typicality flags both. AUROC 0.95 is the goal of docs/anomaly.md."""
    n = 200
    clothes, digits = (data.load(SHARED_DATA / name).test for name in ("fashion-mnist", "mnist"))
    assert clothes is not None and digits is not None
    clothes, digits = clothes[:n, 0], digits[:n, 0]
    noise = np.random.default_rng(0).integers(0, 256, (n, 28, 28), dtype=np.uint8)
    with serving(settings_for(ROOT / "model_store", **LARGE)) as client:

        def scored(score: str, images: np.ndarray) -> np.ndarray:
            rows = post(client, f"model=fashion-mnist&score={score}", images)["results"]
            return np.array([row["anomaly_score"] for row in rows])

        auroc = {
            (score, name): detection(scored(score, clothes), scored(score, images))["auroc"]
            for score in ("typicality", "elbo", "complexity")
            for name, images in (("digits", digits), ("noise", noise))
        }
    assert auroc["elbo", "digits"] < 0.5 and auroc["complexity", "noise"] < 0.5, auroc
    assert auroc["typicality", "digits"] >= 0.95 and auroc["typicality", "noise"] >= 0.95, auroc


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


def test_map_numbers_come_as_json_and_npy(
    client: TestClient, mnist: np.ndarray, version_dir: Path
) -> None:
    response = client.post("/elbo/map?format=json", content=npy(mnist[:3]), headers=NPY)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["likelihood"], body["window"]) == ("bernoulli", 5)
    nats, deviation = np.asarray(body["nats"]), np.asarray(body["deviation"])
    assert nats.shape == deviation.shape == (3, 28, 28)
    # -log p(x_i|z) at z = mean, by hand from the version's graphs.
    graphs = Graphs(version_dir)
    x = mnist[:3, None].astype(np.float32) / np.float32(255)
    logits = graphs.run_decoder(graphs.run_encoder(x)[0]).astype(np.float64)
    want = -(x * logits - np.logaddexp(0.0, logits)).sum(axis=1)
    np.testing.assert_allclose(nats, want, rtol=1e-4, atol=1e-4)
    for kind, numbers in (("nats", nats), ("deviation", deviation)):
        response = client.post(
            f"/elbo/map?format=npy&map={kind}", content=npy(mnist[:3]), headers=NPY
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-npy"
        got = np.load(io.BytesIO(response.content), allow_pickle=False)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, numbers, rtol=1e-6)


def test_the_deviation_map_is_drawn_on_a_diverging_scale(
    client: TestClient, mnist: np.ndarray
) -> None:
    response = client.post("/elbo/map?map=deviation&zoom=1", content=npy(mnist[:2]), headers=NPY)
    assert response.status_code == 200, response.text
    numbers = client.post("/elbo/map?format=npy&map=deviation", content=npy(mnist[:2]), headers=NPY)
    deviation = np.load(io.BytesIO(numbers.content))
    rgb = panels(response.content, 1)[:, 2].astype(int)  # (2, 28, 28, 3)
    # Red above 0 standard deviations, blue below, black at 0; saturating at ±4.
    above, below = deviation > 0.5, deviation < -0.5
    assert (rgb[above, 0] >= rgb[above, 2]).all() and (rgb[below, 2] >= rgb[below, 0]).all()
    assert (rgb[deviation >= 4].min(axis=-1) == 255).all()


def test_map_refuses_bad_input_like_elbo(client: TestClient) -> None:
    response = client.post("/elbo/map", content=npy(np.zeros((1, 32, 32), np.uint8)), headers=NPY)
    assert response.status_code == 422
    assert "32×32" in response.json()["detail"]
