"""The VAE maths the service repeats in numpy, exactly as docs/manifest.md states it.

Shapes: N images, k samples per image, L latent dimensions, D = C·H·W values
per image. Everything is per example; nothing is summed over the batch.
"""

from __future__ import annotations

import math

import numpy as np

from app.manifest import Calibration, Likelihood

LOG_2PI = math.log(2.0 * math.pi)


def noise(seed: int | None, k: int, latent_dim: int) -> np.ndarray:
    """eps for one image, (k, L). The same seed gives every image the same eps,
    so an image's score never depends on its batch-mates."""
    eps: np.ndarray = np.random.default_rng(seed).standard_normal((k, latent_dim), np.float32)
    return eps


def reparameterize(mean: np.ndarray, log_var: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mean + std * eps; mean, log_var (N, L), eps (N, k, L) -> z (N, k, L)."""
    std = np.exp(0.5 * log_var)
    z: np.ndarray = (mean[:, None, :] + std[:, None, :] * eps).astype(np.float32, copy=False)
    return z


def kl(mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(q(z|x) || N(0, I)) in closed form (Kingma & Welling 2014, Appendix B), (N,)."""
    m = mean.astype(np.float64)
    lv = log_var.astype(np.float64)
    result: np.ndarray = 0.5 * np.sum(np.exp(lv) + m**2 - 1.0 - lv, axis=-1)
    return result


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


def log_normal(z: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """log N(z; mean, diag exp(log_var)) summed over the last axis."""
    z64, m64, lv64 = (a.astype(np.float64) for a in (z, mean, log_var))
    result: np.ndarray = -0.5 * np.sum(LOG_2PI + lv64 + (z64 - m64) ** 2 / np.exp(lv64), axis=-1)
    return result


def logmeanexp(a: np.ndarray, axis: int) -> np.ndarray:
    top = np.max(a, axis=axis, keepdims=True)
    result: np.ndarray = np.squeeze(top, axis) + np.log(np.mean(np.exp(a - top), axis=axis))
    return result


def iwae(log_px: np.ndarray, z: np.ndarray, mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """Importance-weighted bound (Burda et al. 2016), (N,).

    log_px (N, k), z (N, k, L), mean and log_var (N, L).
    """
    log_prior = log_normal(z, np.zeros_like(z), np.zeros_like(z))
    log_q = log_normal(z, mean[:, None, :], log_var[:, None, :])
    return logmeanexp(log_px + log_prior - log_q, axis=1)


def bits_per_dim(elbo: np.ndarray, size: int) -> np.ndarray:
    """-elbo / (D ln 2): nats per image to bits per value."""
    result: np.ndarray = -elbo / (size * math.log(2.0))
    return result


def threshold(calibration: Calibration, fpr: float) -> float:
    """The ELBO below which a normal image falls with probability `fpr` (interpolated)."""
    return float(np.interp(fpr, calibration.levels, calibration.elbo_quantiles))


def percentile(calibration: Calibration, elbo: np.ndarray) -> np.ndarray:
    """Where each ELBO sits among the held-out normal data, 0-100 (interpolated)."""
    levels = np.interp(elbo, calibration.elbo_quantiles, calibration.levels)
    result: np.ndarray = 100.0 * levels
    return result
