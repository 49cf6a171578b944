"""log p(x|z) and the pixel means E[x|z] of each likelihood, in numpy (docs/manifest.md).

Shapes: D = C·H·W values per image; x in [0, 1]; logits are the decoder's output.
Sums are float64 whatever the inputs, so scores do not depend on float32 rounding.
"""

from __future__ import annotations

import numpy as np

from vae_contract.manifest import Likelihood


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


def log_likelihood_terms(x: np.ndarray, logits: np.ndarray, likelihood: Likelihood) -> np.ndarray:
    """log p(x_i|z) per value, float64; x and logits broadcast against each other."""
    xs = x.astype(np.float64)
    ls = logits.astype(np.float64)
    terms: np.ndarray = xs * ls - _softplus(ls)
    if likelihood == "continuous_bernoulli":
        terms = terms + _log_cb_normaliser(ls)
    return terms


def log_likelihood(x: np.ndarray, logits: np.ndarray, likelihood: Likelihood) -> np.ndarray:
    """log p(x|z) summed over the last axis (the D values of an image).

    x (..., D) in [0, 1] and logits (..., D) broadcast against each other,
    e.g. x (N, 1, D) against the logits of k samples (N, k, D) -> (N, k).
    """
    result: np.ndarray = log_likelihood_terms(x, logits, likelihood).sum(axis=-1)
    return result


def pixel_means(logits: np.ndarray, likelihood: Likelihood) -> np.ndarray:
    """E[x|z] per value, in [0, 1], same shape as logits (float32)."""
    ls = logits.astype(np.float64)
    probs = 0.5 * (1.0 + np.tanh(0.5 * ls))  # the sigmoid, without overflow in exp
    if likelihood == "continuous_bernoulli":
        small = np.abs(ls) < 1e-3
        safe = np.where(small, 1.0, ls)
        exact = probs / np.tanh(safe / 2.0) - 1.0 / safe
        probs = np.where(small, 0.5 + ls / 12.0, exact)
    return np.clip(probs, 0.0, 1.0).astype(np.float32)
