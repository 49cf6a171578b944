"""The variational bounds in numpy, per example, exactly as docs/manifest.md states them.

Shapes: N images, k samples per image, L latent dimensions, D = C·H·W values
per image. Everything is per example; nothing is summed over the batch.
"""

from __future__ import annotations

import math

import numpy as np

LOG_2PI = math.log(2.0 * math.pi)


def noise(seed: int | None, k: int, latent_dim: int) -> np.ndarray:
    """eps for one image, (k, L). The same seed gives every image the same eps,
    so an image's score never depends on its batch-mates."""
    eps: np.ndarray = np.random.default_rng(seed).standard_normal((k, latent_dim), np.float32)
    return eps


def reparameterize(mean: np.ndarray, log_var: np.ndarray, eps: np.ndarray) -> np.ndarray:
    """z = mean + std * eps; mean, log_var (N, L), eps (N, k, L) or (k, L) -> z (N, k, L)."""
    std = np.exp(0.5 * log_var)
    z: np.ndarray = (mean[:, None, :] + std[:, None, :] * eps).astype(np.float32, copy=False)
    return z


def kl(mean: np.ndarray, log_var: np.ndarray) -> np.ndarray:
    """KL(q(z|x) || N(0, I)) in closed form (Kingma & Welling 2014, Appendix B), (N,)."""
    m = mean.astype(np.float64)
    lv = log_var.astype(np.float64)
    result: np.ndarray = 0.5 * np.sum(np.exp(lv) + m**2 - 1.0 - lv, axis=-1)
    return result


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


def bound(
    log_px: np.ndarray, kl: np.ndarray, z: np.ndarray, mean: np.ndarray, log_var: np.ndarray
) -> np.ndarray:
    """The ELBO with the closed-form `kl` at k = 1, else the importance-weighted bound, (N,).

    At k = 1 the IWAE bound is the ELBO with a Monte Carlo KL, equal to this in
    expectation; the closed form has less noise. log_px (N, k), kl (N,), z (N, k, L).
    """
    if log_px.shape[1] == 1:
        result: np.ndarray = log_px[:, 0] - kl
        return result
    return iwae(log_px, z, mean, log_var)


def bits_per_dim(elbo: np.ndarray, size: int) -> np.ndarray:
    """-elbo / (D ln 2): nats per image to bits per value."""
    result: np.ndarray = -elbo / (size * math.log(2.0))
    return result
