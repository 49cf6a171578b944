"""The discretised logistic and the per-pixel maps of the contract (vae_contract.likelihood,
.maps) against first principles, and the trainer's torch formulas against them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from trainer.likelihood import log_prob, mean
from vae_contract.likelihood import log_likelihood, pixel_means, surprise_moments
from vae_contract.maps import deviation, nats

LEVELS = np.arange(256) / 255.0
# (location on [-1, 1], log-scale): sharp and wide, centred, near and beyond the edges,
# and a log-scale below the floor of -7.
CASES = [(0.3, -3.0), (-0.99, -5.0), (0.0, 0.5), (2.0, -1.0), (0.5, -9.0), (-1.0, -7.0)]


def _one_value(location: float, log_scale: float) -> np.ndarray:
    """The decoder output of a one-value image, (1, 2, 1, 1): location, then log-scale."""
    return np.array([location, log_scale]).reshape(1, 2, 1, 1)


def _log_probabilities(location: float, log_scale: float) -> np.ndarray:
    """log P(value) of each of the 256 values of one sub-pixel."""
    x = LEVELS.reshape(256, 1)  # each value a one-value image
    logits = np.broadcast_to(np.array([location, log_scale]), (256, 2))
    return log_likelihood(x, logits, "discretized_logistic")


def _probabilities(location: float, log_scale: float) -> np.ndarray:
    return np.exp(_log_probabilities(location, log_scale))


@pytest.mark.parametrize(("location", "log_scale"), CASES)
def test_the_discretised_logistic_gives_each_8_bit_value_a_probability(
    location: float, log_scale: float
) -> None:
    log_p = _log_probabilities(location, log_scale)
    assert np.isfinite(log_p).all() and (log_p <= 0).all()  # far values too: no log 0
    p = np.exp(log_p)
    assert p.sum() == pytest.approx(1.0, abs=1e-9)
    # The bin of the value nearest the location, from the logistic's CDF directly.
    s = math.exp(max(log_scale, -7.0))
    value = int(np.clip(round((location + 1) / 2 * 255), 1, 254))
    centre = 2 * value / 255 - 1

    def cdf(t: float) -> float:
        return 1 / (1 + math.exp(-(t - location) / s))

    assert p[value] == pytest.approx(cdf(centre + 1 / 255) - cdf(centre - 1 / 255), rel=1e-9)


@pytest.mark.parametrize(("location", "log_scale"), CASES)
def test_its_pixel_mean_is_within_half_a_level_of_the_distributions_mean(
    location: float, log_scale: float
) -> None:
    exact = float((_probabilities(location, log_scale) * LEVELS).sum())
    got = pixel_means(_one_value(location, log_scale), "discretized_logistic")
    assert got.shape == (1, 1, 1, 1) and got.dtype == np.float32
    assert abs(float(got[0, 0, 0, 0]) - exact) <= 0.5 / 255


def test_values_between_levels_are_scored_as_the_nearest_8_bit_value() -> None:
    logits = np.broadcast_to(np.array([0.1, -3.0]), (2, 2))
    on_grid, off_grid = np.array([[100 / 255], [100.4 / 255]]), np.array([[100 / 255]] * 2)
    np.testing.assert_array_equal(
        log_likelihood(on_grid, logits, "discretized_logistic"),
        log_likelihood(off_grid, logits, "discretized_logistic"),
    )


def test_the_trainer_computes_what_the_service_computes() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (4, 3, 5, 5)) / 255.0
    x[0, 0, 0, :2] = 0.0, 1.0  # both end bins
    logits = rng.normal(0, 2, (4, 6, 5, 5))
    want = log_likelihood(x.reshape(4, -1), logits.reshape(4, -1), "discretized_logistic")
    got = log_prob("discretized_logistic", torch.from_numpy(x), torch.from_numpy(logits))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10)
    means = mean("discretized_logistic", torch.from_numpy(logits)).numpy()
    np.testing.assert_allclose(means, pixel_means(logits, "discretized_logistic"), atol=1e-6)


@pytest.mark.parametrize(
    "likelihood", ["bernoulli", "continuous_bernoulli", "discretized_logistic"]
)
def test_surprise_moments_are_those_of_the_models_own_samples(likelihood: str) -> None:
    rng = np.random.default_rng(1)
    per_value = 2 if likelihood == "discretized_logistic" else 1
    logits = rng.normal(0, 1.5, (1, per_value, 1, 3))
    if likelihood == "discretized_logistic":
        logits[:, 1] = [-4.0, -2.0, 0.0]
    expected, variance = surprise_moments(logits, likelihood)  # type: ignore[arg-type]
    support = {"bernoulli": np.array([0.0, 1.0]), "discretized_logistic": LEVELS}.get(
        likelihood, (np.arange(20_000) + 0.5) / 20_000
    )
    for j in range(3):
        x = support.reshape(-1, 1)
        cost = -log_likelihood(
            x, np.broadcast_to(logits[0, :, 0, j], (len(x), per_value)), likelihood
        )  # type: ignore[arg-type]
        weight = np.exp(-cost) / (len(x) if likelihood == "continuous_bernoulli" else 1)
        assert expected[0, 0, 0, j] == pytest.approx((weight * cost).sum(), rel=1e-3, abs=1e-3)
        second = (weight * cost**2).sum() - (weight * cost).sum() ** 2
        assert variance[0, 0, 0, j] == pytest.approx(second, rel=1e-3, abs=1e-3)


def test_the_deviation_map_is_two_sided() -> None:
    """A wide logistic everywhere: pixels drawn from it read near 0, a patch at its centre
    (more predictable than its samples) reads strongly negative, a patch at an extreme
    strongly positive; the nats map sees only the second."""
    rng = np.random.default_rng(2)
    logits = np.zeros((3, 2, 16, 16))
    logits[:, 1] = math.log(0.2)  # location 0 (value 127.5), scale 0.2 on [-1, 1]
    u = rng.uniform(size=(3, 1, 16, 16))
    x = np.clip(np.rint((1 + 0.2 * np.log(u / (1 - u))) / 2 * 255), 0, 255) / 255
    x[1, :, 4:12, 4:12] = 128 / 255  # a smudge: the expected value, no texture
    x[2, :, 4:12, 4:12] = 250 / 255  # a bright patch, far in the tail
    surprise = nats(x, logits, "discretized_logistic")
    d = deviation(surprise, logits, "discretized_logistic")
    assert abs(d[0].mean()) < 1 and np.abs(d[0]).max() < 5
    assert d[1, 6:10, 6:10].max() < -4
    assert d[2, 6:10, 6:10].min() > 4
    assert surprise[1, 4:12, 4:12].mean() < surprise[0].mean()  # one-sided: the smudge hides
