"""The PPCA anchor (trainer/ppca.py): Tipping & Bishop's closed form, its density and its
dequantised bits/dim bound, against dense linear algebra, scikit-learn and Monte Carlo."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal
from sklearn.decomposition import PCA

from trainer import ppca


def _images(n: int = 400, d: int = 24, seed: int = 0) -> np.ndarray:
    """uint8 'images' of d values with a few strong directions, like pixel data."""
    rng = np.random.default_rng(seed)
    factors = rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) * 30
    return np.clip(np.rint(128 + factors + rng.normal(0, 8, (n, d))), 0, 255).astype(np.uint8)


def test_the_density_is_the_gaussian_with_covariance_w_wt_plus_noise() -> None:
    model = ppca.fit(_images(), 3)
    u, lam, s2 = model.components, model.eigenvalues, model.noise_variance
    covariance = u @ np.diag(lam) @ u.T + s2 * (np.eye(24) - u @ u.T)
    y = (_images(seed=1).astype(np.float64) + 0.5) / 256
    want = multivariate_normal(model.mean, covariance).logpdf(y)
    np.testing.assert_allclose(model.log_density(y), want, rtol=1e-9)


def test_the_fit_is_scikit_learns_probabilistic_pca() -> None:
    images = _images(n=4000)
    y = (images.astype(np.float64) + 0.5) / 256
    model = ppca.fit(images, 3)
    reference = PCA(n_components=3, svd_solver="full").fit(y)  # its score is PPCA's density
    # scikit-learn divides by n - 1 and knows no dequantisation noise: close, not equal.
    np.testing.assert_allclose(
        model.log_density(y[:50]), reference.score_samples(y[:50]), rtol=2e-3
    )


def test_bits_per_dim_bound_the_dequantised_density_in_expectation() -> None:
    images = _images()
    model = ppca.fit(images, 3)
    rng = np.random.default_rng(2)
    x = images[:5].astype(np.float64)
    draws = np.stack(
        [model.log_density((x + rng.uniform(size=x.shape)) / 256) for _ in range(4000)]
    )
    monte_carlo = 8 - draws.mean(axis=0) / (24 * math.log(2))
    np.testing.assert_allclose(model.bits_per_dim(images[:5]), monte_carlo, atol=2e-3)
    assert (model.bits_per_dim(images) > 0).all()  # a probability of 8-bit values: positive


def test_latent_sizes_outside_the_data_are_refused() -> None:
    with pytest.raises(ValueError, match=r"latent_dim must lie in 1\.\.23"):
        ppca.fit(_images(), 24)
