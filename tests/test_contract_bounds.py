"""The contract's numpy maths (vae_contract.bounds, .likelihood) against docs/manifest.md and
first principles."""

from __future__ import annotations

import math

import numpy as np
import pytest

from vae_contract import bounds, scores
from vae_contract.likelihood import log_likelihood, pixel_means
from vae_contract.manifest import Calibration


def test_noise_is_the_documented_draw_and_repeats() -> None:
    eps = bounds.noise(7, 3, 5)
    want = np.random.default_rng(7).standard_normal((3, 5), dtype=np.float32)
    assert eps.dtype == np.float32 and eps.shape == (3, 5)
    np.testing.assert_array_equal(eps, want)
    assert not np.array_equal(bounds.noise(8, 3, 5), eps)


def test_reparameterize_shifts_and_scales_eps() -> None:
    mean = np.array([[1.0, -2.0]], np.float32)
    log_var = np.array([[0.0, 2 * math.log(3.0)]], np.float32)
    eps = np.array([[[1.0, 1.0], [-1.0, 0.5]]], np.float32)  # (N=1, k=2, L=2)
    z = bounds.reparameterize(mean, log_var, eps)
    assert z.dtype == np.float32
    np.testing.assert_allclose(z, [[[2.0, 1.0], [0.0, -0.5]]], rtol=1e-6)


def test_kl_closed_form_values() -> None:
    assert bounds.kl(np.zeros((1, 4)), np.zeros((1, 4)))[0] == 0.0
    # mean 1, variance 4: 0.5 (4 + 1 - 1 - ln 4)
    got = bounds.kl(np.array([[1.0]]), np.array([[math.log(4.0)]]))[0]
    assert got == pytest.approx(0.5 * (4.0 - math.log(4.0)))


def test_kl_is_the_expected_log_density_ratio() -> None:
    rng = np.random.default_rng(0)
    mean, log_var = np.array([[0.5, -1.0, 2.0]]), np.array([[-1.0, 0.3, 0.0]])
    z = mean + np.exp(0.5 * log_var) * rng.standard_normal((200_000, 3))
    zeros = np.zeros_like(z)
    monte_carlo = np.mean(bounds.log_normal(z, mean, log_var) - bounds.log_normal(z, zeros, zeros))
    assert bounds.kl(mean, log_var)[0] == pytest.approx(monte_carlo, rel=1e-2)


def test_bernoulli_log_likelihood_is_the_log_of_the_probabilities() -> None:
    x = np.array([[0.0, 1.0, 1.0, 0.0]])
    logits = np.array([[-2.0, 0.5, 3.0, 1.0]])
    p = 1.0 / (1.0 + np.exp(-logits))
    want = np.sum(x * np.log(p) + (1 - x) * np.log(1 - p))
    assert log_likelihood(x, logits, "bernoulli")[0] == pytest.approx(want)


def test_log_likelihood_broadcasts_one_image_over_k_samples() -> None:
    x = np.array([[[0.0, 1.0]]])  # (N=1, 1, D=2)
    logits = np.array([[[0.0, 0.0], [2.0, -1.0], [-3.0, 4.0]]])  # (1, k=3, 2)
    got = log_likelihood(x, logits, "bernoulli")
    assert got.shape == (1, 3)
    for j in range(3):
        assert got[0, j] == pytest.approx(
            log_likelihood(x[0], logits[0, j : j + 1], "bernoulli")[0]
        )


@pytest.mark.parametrize("logit", [-30.0, -3.0, -1e-5, 0.0, 2e-4, 1.5, 40.0])
def test_continuous_bernoulli_density_integrates_to_one(logit: float) -> None:
    x = np.linspace(0.0, 1.0, 20_001)[:, None]  # each x a one-value image
    density = np.exp(log_likelihood(x, np.full_like(x, logit), "continuous_bernoulli"))
    assert np.trapezoid(density, x[:, 0]) == pytest.approx(1.0, rel=1e-6)


@pytest.mark.parametrize("logit", [-30.0, -3.0, -1e-5, 0.0, 2e-4, 1.5, 40.0])
def test_continuous_bernoulli_pixel_mean_is_the_mean_of_the_density(logit: float) -> None:
    x = np.linspace(0.0, 1.0, 20_001)[:, None]
    density = np.exp(log_likelihood(x, np.full_like(x, logit), "continuous_bernoulli"))
    mean = np.trapezoid(x[:, 0] * density, x[:, 0])
    got = pixel_means(np.array([logit]), "continuous_bernoulli")[0]
    assert got == pytest.approx(mean, abs=1e-5)


def test_bernoulli_pixel_means_are_sigmoids_in_float32() -> None:
    means = pixel_means(np.array([-800.0, 0.0, 2.0, 800.0]), "bernoulli")
    assert means.dtype == np.float32
    np.testing.assert_allclose(means, [0.0, 0.5, 1 / (1 + math.exp(-2)), 1.0], rtol=1e-6)


def test_iwae_with_one_sample_is_the_monte_carlo_elbo() -> None:
    rng = np.random.default_rng(1)
    mean, log_var = rng.standard_normal((2, 3)), rng.standard_normal((2, 3))
    z = rng.standard_normal((2, 1, 3))
    log_px = rng.standard_normal((2, 1)) - 50.0
    zeros = np.zeros_like(z)
    want = (
        log_px[:, 0]
        + bounds.log_normal(z, zeros, zeros)[:, 0]
        - bounds.log_normal(z, mean[:, None], log_var[:, None])[:, 0]
    )
    np.testing.assert_allclose(bounds.iwae(log_px, z, mean, log_var), want)


def test_logmeanexp_is_stable_far_from_zero() -> None:
    a = np.array([[-10_000.0, -10_000.0 + math.log(3.0)]])
    assert bounds.logmeanexp(a, axis=1)[0] == pytest.approx(-10_000.0 + math.log(2.0))


def test_bits_per_dim() -> None:
    assert bounds.bits_per_dim(np.array([-784 * math.log(2.0)]), 784)[0] == pytest.approx(1.0)


def test_threshold_and_percentile_interpolate_the_calibration() -> None:
    calibration = Calibration(
        split="validation",
        n=100,
        k=1,
        seed=0,
        statistic="elbo",
        levels=[0.0, 0.01, 0.5, 1.0],
        elbo_quantiles=[-300.0, -200.0, -100.0, -50.0],
    )
    # score=elbo is calibrated as the ELBO itself: its anomaly score is -ELBO.
    assert scores.threshold(calibration, "elbo", 0.01) == 200.0
    assert scores.threshold(calibration, "elbo", 0.255) == pytest.approx(150.0)
    np.testing.assert_allclose(
        scores.percentile(calibration, "elbo", np.array([400.0, 150.0, 100.0, 0.0])),
        [0.0, 25.5, 50.0, 100.0],
    )
