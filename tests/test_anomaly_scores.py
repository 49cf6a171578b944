"""The anomaly scores' maths (vae_contract.scores, which the trainer and the service both
use) against docs/manifest.md, and the heat map the service draws."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from trainer.anomaly import detection
from vae_contract import scores
from vae_contract.manifest import Calibration

LEVELS = [0.0, 0.01, 0.5, 0.99, 1.0]


def calibration(**extra: object) -> Calibration:
    return Calibration.model_validate(
        {
            "split": "validation",
            "n": 100,
            "k": 1,
            "seed": 0,
            "statistic": "elbo",
            "levels": LEVELS,
            "elbo_quantiles": [-300.0, -200.0, -100.0, -80.0, -50.0],
            **extra,
        }
    )


def png_bits_by_hand(image: np.ndarray) -> float:
    """docs/manifest.md: 8 · len(PNG), Pillow, mode L, compress_level=9."""
    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG", compress_level=9)
    return 8.0 * len(out.getvalue())


def test_png_bits_are_the_spec_of_the_uint8_image(mnist: np.ndarray) -> None:
    images = mnist[:8]
    by_hand = [png_bits_by_hand(image) for image in images]
    # What the service scores: the float pixels a uint8 image becomes (x = u / 255).
    served = scores.png_bits(images[:, None].astype(np.float32) / np.float32(255))
    assert served.tolist() == by_hand
    # A blank image compresses to far fewer bits than a digit: the "complexity".
    assert scores.png_bits(np.zeros((1, 1, 28, 28), np.float32))[0] < min(by_hand) / 2


def test_png_bits_of_rgb_images() -> None:
    rgb = np.random.default_rng(0).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    served = scores.png_bits(rgb.astype(np.float32) / np.float32(255))
    out = io.BytesIO()
    Image.fromarray(rgb[0].transpose(1, 2, 0)).save(out, format="PNG", compress_level=9)
    assert served[0] == 8 * len(out.getvalue())


def test_complexity_subtracts_the_code_length_in_nats() -> None:
    bound, bits = np.array([-100.0]), np.array([1000.0])
    assert scores.anomaly(bound, None)[0] == 100.0
    assert scores.anomaly(bound, bits)[0] == pytest.approx(100.0 - 1000.0 * math.log(2.0))


def test_elbo_threshold_and_percentile_keep_their_meaning() -> None:
    c = calibration()
    assert scores.threshold(c, "elbo", 0.01) == 200.0  # the ELBO's 1% quantile, negated
    got = scores.percentile(c, "elbo", np.array([250.0, 100.0]))
    assert got is not None and got.tolist() == [0.5, 50.0]


def test_other_scores_use_their_own_quantiles() -> None:
    quantiles = [-10.0, 0.0, 10.0, 20.0, 40.0]
    c = calibration(scores={"complexity": {"k": 1, "quantiles": quantiles}})
    assert scores.threshold(c, "complexity", 0.01) == 20.0  # the 99% quantile
    assert scores.threshold(c, "complexity", 0.5) == 10.0
    # Percentage of normal images at least as anomalous: low is unusual.
    got = scores.percentile(c, "complexity", np.array([-20.0, 10.0, 20.0, 100.0]))
    assert got is not None
    np.testing.assert_allclose(got, [100.0, 50.0, 1.0, 0.0])


def test_a_score_without_calibration_has_no_threshold() -> None:
    c = calibration()
    assert scores.threshold(c, "iwae", 0.01) is None
    assert scores.percentile(c, "complexity", np.array([1.0])) is None
    assert scores.threshold(None, "elbo", 0.01) is None
    assert scores.default_k(c, "iwae") == scores.IW_K
    assert (
        scores.default_k(calibration(scores={"iwae": {"k": 8, "quantiles": LEVELS}}), "iwae") == 8
    )
    assert scores.default_k(c, "complexity") == 1


def test_the_manifest_refuses_score_quantiles_that_do_not_fit_the_levels() -> None:
    with pytest.raises(ValidationError, match=r"levels and scores\.iwae\.quantiles need the same"):
        calibration(scores={"iwae": {"k": 64, "quantiles": [1.0, 2.0]}})
    with pytest.raises(ValidationError, match=r"scores\.iwae\.quantiles must be non-decreasing"):
        calibration(scores={"iwae": {"k": 64, "quantiles": [5.0, 4.0, 3.0, 2.0, 1.0]}})


def test_the_trainer_calibration_is_quantiles_of_each_score() -> None:
    rng = np.random.default_rng(0)
    held_out = {name: rng.normal(size=1000) for name in scores.SCORES}
    c = Calibration.model_validate(scores.calibrate(held_out, k=16))
    median = c.levels.index(0.5)
    assert c.elbo_quantiles[median] == pytest.approx(np.median(-held_out["elbo"]), abs=1e-4)
    assert c.scores["iwae"].k == 16
    for name in ("iwae", "complexity"):
        assert c.scores[name].quantiles[median] == pytest.approx(
            np.median(held_out[name]), abs=1e-4
        )
    # About fpr of the held-out images lie above the threshold the service derives.
    limit = scores.threshold(c, "complexity", 0.05)
    assert limit is not None
    assert np.mean(held_out["complexity"] > limit) == pytest.approx(0.05, abs=0.002)


def test_detection_metrics() -> None:
    normal, anomalous = np.arange(100.0), np.arange(100.0) + 50.0
    result = detection(normal, anomalous)
    # 8725 of the 10000 pairs ordered right, 50 ties counting half.
    assert result["auroc"] == pytest.approx(0.875)
    perfect = detection(np.zeros(10), np.ones(10))
    assert perfect == {"auroc": 1.0, "auprc": 1.0, "fpr_at_95_tpr": 0.0}
    # The threshold catching 95 of these anomalies (>= 55) also flags normal 55..99: 45%.
    assert result["fpr_at_95_tpr"] == pytest.approx(0.45)
