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
from vae_contract import scores, typicality
from vae_contract.manifest import Calibration, Compressor, Gaussian
from vae_contract.scores import STATISTICS

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
    stats = scores.Statistics(np.array([-100.0]), np.array([5.0]), np.array([1000.0]))
    assert scores.anomaly("elbo", stats)[0] == 100.0
    assert scores.anomaly("iwae", stats)[0] == 100.0
    assert scores.anomaly("complexity", stats)[0] == pytest.approx(100.0 - 1000.0 * math.log(2.0))


def test_pixel_entropy_is_the_binary_entropy_of_the_grey_values() -> None:
    x = np.zeros((3, 1, 2, 2), np.float32)
    x[1, 0, 0, 0] = 0.5  # one grey pixel: ln 2
    x[2] = np.array([[0.25, 1.0], [0.75, 0.0]])
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    np.testing.assert_allclose(scores.pixel_entropy(x), [0.0, math.log(2.0), 2 * h], rtol=1e-6)


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


def held_out_statistics(n: int, seed: int = 0) -> scores.Statistics:
    """Statistics that move together, as a model's do on normal images."""
    rng = np.random.default_rng(seed)
    bits = rng.normal(2000.0, 300.0, n)
    return scores.Statistics(
        elbo=-0.05 * bits + rng.normal(0, 10, n),
        kl=rng.gamma(20.0, 1.0, n),
        complexity_bits=bits,
        pixel_entropy=0.02 * bits + rng.normal(0, 3, n),
    )


def test_the_trainer_calibration_is_quantiles_of_each_score() -> None:
    held_out = held_out_statistics(2000)
    iwae = held_out.elbo + 1.0
    c = Calibration.model_validate(scores.calibrate(held_out, (1, 28, 28), iwae, k=16))
    median = c.levels.index(0.5)
    assert c.elbo_quantiles[median] == pytest.approx(np.median(held_out.elbo), abs=1e-4)
    assert c.scores["iwae"].k == 16
    assert c.scores["iwae"].quantiles[median] == pytest.approx(np.median(-iwae), abs=1e-4)
    complexity = scores.anomaly("complexity", held_out)
    assert c.scores["complexity"].quantiles[median] == pytest.approx(
        np.median(complexity), abs=1e-4
    )
    # About fpr of the held-out images lie above the threshold the service derives.
    limit = scores.threshold(c, "complexity", 0.05)
    assert limit is not None
    assert np.mean(complexity > limit) == pytest.approx(0.05, abs=0.002)


def test_typicality_is_fitted_on_one_half_and_measured_on_the_other() -> None:
    held_out = held_out_statistics(2000)
    c = Calibration.model_validate(scores.calibrate(held_out, (1, 28, 28)))
    entry = c.scores["typicality"]
    gaussian = entry.gaussian
    assert gaussian is not None and entry.compressor is not None
    assert gaussian.statistics == list(scores.STATISTICS)
    assert (gaussian.images, gaussian.n) == ("validation[0::2]", 1000)
    assert (entry.images, entry.n, entry.k) == ("validation[1::2]", 1000, 1)
    fitted = held_out.take(slice(0, None, 2)).table(gaussian.statistics)
    np.testing.assert_allclose(gaussian.mean, fitted.mean(axis=0))
    np.testing.assert_allclose(gaussian.covariance, np.cov(fitted, rowvar=False))
    # The score is the squared Mahalanobis distance, by hand.
    measured = held_out.take(slice(1, None, 2))
    centred = measured.table(gaussian.statistics) - fitted.mean(axis=0)
    by_hand = np.einsum("ni,ij,nj->n", centred, np.linalg.inv(np.cov(fitted.T)), centred)
    np.testing.assert_allclose(scores.anomaly("typicality", measured, c), by_hand, rtol=1e-9)
    # Its quantiles are of the half it was not fitted on; fpr holds there.
    median = c.levels.index(0.5)
    assert entry.quantiles[median] == pytest.approx(np.median(by_hand), abs=1e-4)
    limit = scores.threshold(c, "typicality", 0.1)
    assert limit is not None and np.mean(by_hand > limit) == pytest.approx(0.1, abs=0.002)
    # Near 4 statistics' chi-squared: the typical squared distance of 4 Gaussian values.
    assert 3.0 < entry.quantiles[median] < 4.0


def test_typicality_is_two_sided() -> None:
    """Too likely is as atypical as too unlikely: what elbo alone cannot see."""
    held_out = held_out_statistics(2000)
    c = Calibration.model_validate(scores.calibrate(held_out, (1, 28, 28)))
    typical = scores.Statistics(*(np.array([v]) for v in c.scores["typicality"].gaussian.mean))  # type: ignore[union-attr]

    def shifted(d_elbo: float) -> float:
        s = scores.Statistics(
            typical.elbo + d_elbo, typical.kl, typical.complexity_bits, typical.pixel_entropy
        )
        return float(scores.anomaly("typicality", s, c)[0])

    limit = scores.threshold(c, "typicality", 0.01)
    assert limit is not None
    assert shifted(0.0) < 0.1
    # An ELBO 6 sd above or below what the other statistics imply is as atypical.
    assert shifted(+60.0) > limit and shifted(-60.0) > limit
    # The elbo score ranks the too-likely image among the most normal of all.
    too_likely = scores.anomaly("elbo", scores.Statistics(typical.elbo + 60, typical.kl))
    assert (scores.percentile(c, "elbo", too_likely) or [0.0])[0] > 99


def test_a_calibration_too_small_to_fit_has_no_typicality() -> None:
    few = held_out_statistics(8)
    assert "typicality" not in scores.calibrate(few, (1, 28, 28))["scores"]
    assert (
        scores.choose(Calibration.model_validate(scores.calibrate(few, (1, 28, 28))), None)
        == "elbo"
    )


def test_the_manifest_refuses_a_gaussian_it_cannot_use() -> None:
    good = {"statistics": ["elbo", "kl"], "images": "validation[0::2]", "n": 10}
    good |= {"mean": [0.0, 1.0], "covariance": [[2.0, 0.5], [0.5, 1.0]]}
    Gaussian.model_validate(good)
    for change, message in (
        ({"covariance": [[1.0, 2.0], [2.0, 1.0]]}, "positive definite"),
        ({"covariance": [[1.0, 0.5], [0.4, 1.0]]}, "symmetric"),
        ({"mean": [0.0]}, "one entry per statistic"),
        ({"covariance": [[1.0, 0.0], [0.0]]}, "square"),
        ({"mean": [0.0, float("nan")]}, "finite"),
        ({"statistics": ["elbo", "elbo"]}, "distinct"),
    ):
        with pytest.raises(ValidationError, match=message):
            Gaussian.model_validate(good | change)


def test_choose_defaults_to_typicality_where_the_version_has_it() -> None:
    fitted = Calibration.model_validate(scores.calibrate(held_out_statistics(200), (1, 28, 28)))
    assert scores.choose(fitted, None) == "typicality"
    assert scores.choose(fitted, "iwae") == "iwae"
    old = calibration()  # a manifest from before typicality
    assert scores.choose(old, None) == "elbo" and scores.choose(None, None) == "elbo"
    with pytest.raises(scores.Unusable, match="vae-calibrate"):
        scores.choose(old, "typicality")
    raw = fitted.model_dump()
    raw["scores"]["typicality"]["gaussian"]["statistics"][3] = "lpips"  # a newer trainer's
    newer = Calibration.model_validate(raw)
    with pytest.raises(scores.Unusable, match=r"\['lpips'\], which this service does not"):
        scores.choose(newer, "typicality")
    assert scores.choose(newer, None) == "elbo"


def test_probe_images_are_fixed_patterns() -> None:
    probes = scores.probe_images((3, 12, 10))
    assert probes.shape == (4, 3, 12, 10) and probes.dtype == np.float32
    np.testing.assert_array_equal(probes, scores.probe_images((3, 12, 10)))
    assert probes.min() >= 0.0 and probes.max() <= 1.0
    assert all(len(np.unique(p)) > 4 for p in probes)  # neither blank nor a single edge


def test_the_service_checks_it_reproduces_the_compressor() -> None:
    shape = (1, 28, 28)
    here = Compressor.model_validate(scores.compressor(shape))
    assert scores.compressor_problem(here, shape) is None
    other_probe = here.model_copy(update={"probe": [p + 8 for p in here.probe or []]})
    assert "PNG code lengths here differ" in (scores.compressor_problem(other_probe, shape) or "")
    level_6 = here.model_copy(update={"compress_level": 6})
    assert "compress_level 6" in (scores.compressor_problem(level_6, shape) or "")
    old = here.model_copy(update={"probe": None})  # a calibration from before probes
    assert scores.compressor_problem(old, shape) is None
    other_zlib = old.model_copy(update={"zlib": "0.9"})
    assert "zlib 0.9" in (scores.compressor_problem(other_zlib, shape) or "")


def test_a_calibration_that_does_not_hold_says_why() -> None:
    shape = (1, 28, 28)
    raw = scores.calibrate(held_out_statistics(200), shape)
    fitted = Calibration.model_validate(raw)
    for score in ("typicality", "elbo", "complexity"):
        assert scores.calibration_problem(fitted, score, shape) is None
    assert scores.calibration_problem(None, "elbo", shape) == "the manifest has no calibration"
    assert "does not calibrate score=iwae" in (
        scores.calibration_problem(fitted, "iwae", shape) or ""
    )
    raw["scores"]["typicality"]["compressor"]["probe"][0] += 8.0
    moved = Calibration.model_validate(raw)
    assert "differ" in (scores.calibration_problem(moved, "typicality", shape) or "")
    assert scores.calibration_problem(moved, "complexity", shape) is None  # its own record


def test_detection_metrics() -> None:
    normal, anomalous = np.arange(100.0), np.arange(100.0) + 50.0
    result = detection(normal, anomalous)
    # 8725 of the 10000 pairs ordered right, 50 ties counting half.
    assert result["auroc"] == pytest.approx(0.875)
    perfect = detection(np.zeros(10), np.ones(10))
    assert perfect == {"auroc": 1.0, "auprc": 1.0, "fpr_at_95_tpr": 0.0}
    # The threshold catching 95 of these anomalies (>= 55) also flags normal 55..99: 45%.
    assert result["fpr_at_95_tpr"] == pytest.approx(0.45)


def test_a_typicality_distance_does_not_depend_on_the_rows_beside_it() -> None:
    """LAPACK's solve picks its kernels by the number of rows: an image's distance
    changed in its last bits with its batch-mates. Bit for bit, alone or together."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(300, 4)) * [10.0, 3.0, 1000.0, 20.0]
    gaussian = Gaussian.model_validate(typicality.fit(values[:200], STATISTICS, "fit"))
    together = typicality.distance(gaussian, values[200:])
    alone = [typicality.distance(gaussian, values[i : i + 1])[0] for i in range(200, 300)]
    eights = [typicality.distance(gaussian, values[i : i + 8]) for i in range(200, 300, 8)]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, np.concatenate(eights))
