"""log p(x|z) and the pixel means E[x|z] of each likelihood, in numpy (docs/manifest.md).

Shapes: D = C·H·W values per image; x in [0, 1]; logits are the decoder's output.
The Bernoulli likelihoods take one logit per value. The discretised logistic takes
two per value, stacked along the channel axis of the decoder's output (2C, H, W):
the location first, then the log-scale; flattened, that is D locations then D
log-scales, so a flat (..., 2D) row splits in halves the same way.
Sums are float64 whatever the inputs, so scores do not depend on float32 rounding.
"""

from __future__ import annotations

import numpy as np

from vae_contract.manifest import Likelihood, parameters_per_value

__all__ = ["log_likelihood", "log_likelihood_terms", "parameters_per_value", "pixel_means"]

# The discretised logistic (PixelCNN++, Salimans et al. 2017; IAF, Kingma et al. 2016)
# over the 256 values of an 8-bit sub-pixel, on [-1, 1]: value v sits at 2v/255 - 1,
# its bin is ± half a step wide, and the end bins reach to ±infinity.
LEVELS = 256
HALF_BIN = 1.0 / (LEVELS - 1)
# log-scales below this are raised to it (PixelCNN++'s floor), by the trainer too:
# s = e^-7 is already 9 times narrower than a bin.
MIN_LOG_SCALE = -7.0


def _softplus(x: np.ndarray) -> np.ndarray:
    result: np.ndarray = np.logaddexp(0.0, x)
    return result


def _log_cb_normaliser(logits: np.ndarray) -> np.ndarray:
    """log C(l) with C(l) = l / tanh(l / 2), the continuous Bernoulli normaliser.

    Near 0 the ratio is 0/0; its Taylor series 2 + l²/6 is exact to float64
    there. For large |l|, C(l) ≈ |l|, and l / tanh(l/2) stays finite.
    """
    small = np.abs(logits) < 1e-3
    safe = np.where(small, 1.0, logits)
    exact = np.log(safe / np.tanh(safe / 2.0))
    series = np.log(2.0 + logits**2 / 6.0)
    result: np.ndarray = np.where(small, series, exact)
    return result


def split(logits: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """A discretised logistic's (location, log-scale), float64, log-scale floored."""
    location, log_scale = np.split(logits.astype(np.float64), 2, axis=axis)
    return location, np.maximum(log_scale, MIN_LOG_SCALE)


def _discretized_logistic(x: np.ndarray, location: np.ndarray, log_scale: np.ndarray) -> np.ndarray:
    """log P(the 8-bit value nearest 255·x) per value. With a = (x' + h - m)/s and
    b = (x' - h - m)/s the bin's edges: log(σ(a) - σ(b)) = a - softplus(a) - softplus(b)
    + log(1 - e^(b - a)), stable for narrow bins; the end bins are log σ(a) and log(1 - σ(b))."""
    level = np.clip(np.rint(x * (LEVELS - 1)), 0, LEVELS - 1)
    centred = 2.0 * level / (LEVELS - 1) - 1.0 - location  # x' - m
    inverse_scale = np.exp(-log_scale)
    a = (centred + HALF_BIN) * inverse_scale
    b = (centred - HALF_BIN) * inverse_scale
    inner = a - _softplus(a) - _softplus(b) + np.log(-np.expm1(-2.0 * HALF_BIN * inverse_scale))
    result: np.ndarray = np.where(
        level <= 0, -_softplus(-a), np.where(level >= LEVELS - 1, -_softplus(b), inner)
    )
    return result


def log_likelihood_terms(
    x: np.ndarray, logits: np.ndarray, likelihood: Likelihood, axis: int = -1
) -> np.ndarray:
    """log p(x_i|z) per value, float64, shaped like x broadcast with one parameter set.

    `axis`: where a discretised logistic's two parameter halves are stacked, -1 for
    flat (..., 2D) rows, -3 for (..., 2C, H, W) images.
    """
    xs = x.astype(np.float64)
    if likelihood == "discretized_logistic":
        return _discretized_logistic(xs, *split(logits, axis))
    ls = logits.astype(np.float64)
    terms: np.ndarray = xs * ls - _softplus(ls)
    if likelihood == "continuous_bernoulli":
        terms = terms + _log_cb_normaliser(ls)
    return terms


def surprise_moments(logits: np.ndarray, likelihood: Likelihood) -> tuple[np.ndarray, np.ndarray]:
    """The mean and variance of -log p(x_i|z) when x_i is drawn from p(x_i|z) itself,
    per value, float64: logits (N, P·C, H, W) -> two (N, C, H, W). What a pixel costs
    when the model is right; the two-sided map (vae_contract.maps) measures from it.

    Exact for the Bernoulli (x in {0, 1}) and the discretised logistic (256 levels);
    for the continuous Bernoulli, the midpoint rule on 256 points of [0, 1].
    """
    if likelihood == "bernoulli":
        ls = logits.astype(np.float64)
        p = 0.5 * (1.0 + np.tanh(0.5 * ls))
        expected = p * _softplus(-ls) + (1.0 - p) * _softplus(ls)
        return expected, p * (1.0 - p) * ls**2
    grid = (np.arange(LEVELS) + (0.5 if likelihood == "continuous_bernoulli" else 0.0)) / (
        LEVELS if likelihood == "continuous_bernoulli" else LEVELS - 1
    )
    expected = np.empty(
        (len(logits), logits.shape[1] // parameters_per_value(likelihood), *logits.shape[2:])
    )
    variance = np.empty_like(expected)
    for i, image in enumerate(logits):  # one image at a time: (C, H, W, 256) float64 each
        stacked = np.broadcast_to(image[..., None], (*image.shape, 1))
        terms = log_likelihood_terms(grid, stacked, likelihood, axis=-4)  # (C, H, W, 256)
        p = np.exp(terms)
        if likelihood == "continuous_bernoulli":
            p = p / LEVELS  # a density: each midpoint stands for 1/256 of [0, 1]
        mean = -(p * terms).sum(axis=-1)
        expected[i], variance[i] = mean, np.maximum((p * terms**2).sum(axis=-1) - mean**2, 0.0)
    return expected, variance


def log_likelihood(x: np.ndarray, logits: np.ndarray, likelihood: Likelihood) -> np.ndarray:
    """log p(x|z) summed over the last axis (the D values of an image).

    x (..., D) in [0, 1] and logits (..., D), or (..., 2D) for the discretised
    logistic, broadcast against each other, e.g. x (N, 1, D) against the logits
    of k samples (N, k, D) -> (N, k).
    """
    result: np.ndarray = log_likelihood_terms(x, logits, likelihood).sum(axis=-1)
    return result


def pixel_means(logits: np.ndarray, likelihood: Likelihood) -> np.ndarray:
    """E[x|z] per value, in [0, 1] (float32): logits (..., P·C, H, W) -> (..., C, H, W).

    For the discretised logistic, the mean of the logistic clipped to [-1, 1],
    -1 + s·(softplus((m + 1)/s) - softplus((m - 1)/s)): rounding it to the
    nearest level moves the mean by at most half a level.
    """
    if likelihood == "discretized_logistic":
        location, log_scale = split(logits, -3)
        s = np.exp(log_scale)
        clipped = -1.0 + s * (_softplus((location + 1.0) / s) - _softplus((location - 1.0) / s))
        means: np.ndarray = np.clip((clipped + 1.0) / 2.0, 0.0, 1.0).astype(np.float32)
        return means
    ls = logits.astype(np.float64)
    probs = 0.5 * (1.0 + np.tanh(0.5 * ls))  # the sigmoid, without overflow in exp
    if likelihood == "continuous_bernoulli":
        small = np.abs(ls) < 1e-3
        safe = np.where(small, 1.0, ls)
        exact = probs / np.tanh(safe / 2.0) - 1.0 / safe
        probs = np.where(small, 0.5 + ls / 12.0, exact)
    return np.clip(probs, 0.0, 1.0).astype(np.float32)
