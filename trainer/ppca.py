"""Probabilistic PCA (Tipping & Bishop 1999), the linear special case of a VAE, fitted
in closed form: the anchor a nonlinear VAE must beat on the same images.

p(y) = N(y; m, C), C = W Wᵀ + σ² I, with W of rank L (the VAE's latent size). The
maximum-likelihood fit keeps the L largest eigenvalues λ of the sample covariance
and sets σ² to the mean of the other D - L; C's eigenvalues are then λ_1..λ_L and
σ² (D - L times).

8-bit images meet this density by dequantisation (Theis et al. 2016): y = (x + u)/256,
u ~ U[0, 1)^D, whose discrete probability P(x) = ∫ p(y) dy over the value's cube of
side 1/256 is at least exp(E_u log p(y)) / 256^D (Jensen). So

    bits/dim(x) <= 8 - E_u[log p((x + u)/256)] / (D ln 2),

the figure comparable with a discretised-likelihood VAE's. For a Gaussian the
expectation is closed-form: with ȳ = (x + ½)/256, E_u log p(y) = log p(ȳ) -
tr(C⁻¹)/(2·12·256²), the uniform noise having variance 1/12 of a value's step².
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

LEVELS = 256
_NOISE_VARIANCE = 1.0 / (12.0 * LEVELS**2)  # of (u - ½)/256 per value


@dataclass(frozen=True)
class PPCA:
    mean: np.ndarray  # (D,)
    components: np.ndarray  # (D, L): the top-L eigenvectors of the covariance
    eigenvalues: np.ndarray  # (L,)
    noise_variance: float  # σ²

    @property
    def size(self) -> int:
        return len(self.mean)

    def log_det(self) -> float:
        d, latent = self.components.shape
        return float(np.log(self.eigenvalues).sum() + (d - latent) * math.log(self.noise_variance))

    def trace_inverse(self) -> float:
        d, latent = self.components.shape
        return float((1.0 / self.eigenvalues).sum() + (d - latent) / self.noise_variance)

    def log_density(self, y: np.ndarray) -> np.ndarray:
        """log N(y; m, C) per row, y (N, D) -> (N,), float64. C⁻¹ in the eigenbasis:
        U diag(1/λ) Uᵀ on the principal subspace, 1/σ² on its complement."""
        centred = y.astype(np.float64) - self.mean
        projected = centred @ self.components  # (N, L)
        residual = (centred**2).sum(axis=1) - (projected**2).sum(axis=1)
        mahalanobis = (projected**2 / self.eigenvalues).sum(axis=1) + residual / self.noise_variance
        result: np.ndarray = -0.5 * (
            self.size * math.log(2 * math.pi) + self.log_det() + mahalanobis
        )
        return result

    def bits_per_dim(self, images: np.ndarray) -> np.ndarray:
        """Per image, the dequantised upper bound on bits/dim of uint8 images (N, ...)."""
        x = images.reshape(len(images), -1).astype(np.float64)
        centre = (x + 0.5) / LEVELS
        expected = self.log_density(centre) - 0.5 * self.trace_inverse() * _NOISE_VARIANCE
        result: np.ndarray = 8.0 - expected / (self.size * math.log(2.0))
        return result

    def reconstruct(self, images: np.ndarray) -> np.ndarray:
        """The decoder's mean at the posterior mean of z, W E[z|y] + m = m + U diag((λ - σ²)/λ)
        Uᵀ (y - m): the projection onto the principal subspace, shrunk; uint8 in, [0, 1] out."""
        centre = (images.reshape(len(images), -1).astype(np.float64) + 0.5) / LEVELS
        shrink = (self.eigenvalues - self.noise_variance) / self.eigenvalues
        projected = ((centre - self.mean) @ self.components) * shrink
        result: np.ndarray = np.clip(self.mean + projected @ self.components.T, 0.0, 1.0)
        return result.reshape(images.shape)


def fit(images: np.ndarray, latent_dim: int) -> PPCA:
    """The maximum-likelihood PPCA of dequantised uint8 images (N, ...): the covariance
    of y = (x + u)/256 is that of (x + ½)/256 plus the noise's 1/(12·256²) on the diagonal."""
    x = images.reshape(len(images), -1).astype(np.float64)
    n, d = x.shape
    if not 0 < latent_dim < min(n, d):
        raise ValueError(f"latent_dim must lie in 1..{min(n, d) - 1}, got {latent_dim}")
    y = (x + 0.5) / LEVELS
    mean = y.mean(axis=0)
    covariance = np.cov(y, rowvar=False, bias=True) + _NOISE_VARIANCE * np.eye(d)
    eigenvalues, vectors = np.linalg.eigh(covariance)  # ascending
    eigenvalues, vectors = eigenvalues[::-1], vectors[:, ::-1]
    noise = float(eigenvalues[latent_dim:].mean())
    return PPCA(mean, vectors[:, :latent_dim].copy(), eigenvalues[:latent_dim].copy(), noise)
