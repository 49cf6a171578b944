"""The typicality score's detector: how far an image's statistics lie from those of
held-out normal images, all at once (DoSE, Morningstar et al. 2021).

A single likelihood fails in one direction or the other: a digits model rates a blank
page above any digit, a clothes model rates digits above clothes (Nalisnick et al.
2019). An image's ELBO, its KL, its PNG code length and the entropy of its grey values
move together on normal images; a Gaussian fitted to them there scores an image by its
squared Mahalanobis distance, which is two-sided: too likely is as atypical as too
unlikely, and a likelihood that is wrong *for its code length* is atypical too.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vae_contract.manifest import Gaussian


def fit(values: np.ndarray, statistics: tuple[str, ...], images: str) -> dict[str, Any]:
    """The manifest's `gaussian` from values (N, d) of the named statistics: their sample
    mean and covariance (ddof 1). Raises ValueError when the covariance is singular."""
    n, d = values.shape
    if d != len(statistics) or n <= d + 1:
        raise ValueError(f"{n} images cannot fit a Gaussian over {len(statistics)} statistics")
    gaussian = {
        "statistics": list(statistics),
        "images": images,
        "n": n,
        "mean": values.mean(axis=0).tolist(),
        "covariance": np.cov(values, rowvar=False).tolist(),
    }
    Gaussian.model_validate(gaussian)  # positive definite, or a clear ValueError
    return gaussian


def distance(gaussian: Gaussian, values: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance (N,) of values (N, d), columns as `gaussian.statistics`."""
    centred = values.astype(np.float64) - np.asarray(gaussian.mean)  # (N, d)
    precision = np.linalg.inv(np.asarray(gaussian.covariance))  # Σ⁻¹, (d, d)
    # Elementwise products and sums along fixed axes, not LAPACK's solve or BLAS: those
    # pick kernels by N, so an image's distance changed in its last bits with the number
    # of images beside it. This way each row is computed alike whatever its batch.
    whitened = (centred[:, :, None] * precision[None]).sum(axis=1)  # Σ⁻¹ (x - μ), (N, d)
    result: np.ndarray = (whitened * centred).sum(axis=1)
    return result
