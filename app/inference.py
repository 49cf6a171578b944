"""What the endpoints compute: batched graph calls plus the numpy maths of app.vae.

Inputs arrive validated; each function awaits the version's batchers, so
concurrent requests share ONNX Runtime calls.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np

from app.errors import Unprocessable
from app.registry import ModelVersion
from vae_contract import bounds, scores
from vae_contract.likelihood import log_likelihood, log_likelihood_terms, pixel_means
from vae_contract.scores import Statistics

# Decode at most this many values (rows × D) per batcher submission, so /elbo
# with large k holds a bounded slice of logits in memory at a time.
_DECODE_VALUES = 1 << 22


@dataclass(frozen=True)
class Encoded:
    mean: np.ndarray  # (N, L)
    log_var: np.ndarray  # (N, L)
    z: np.ndarray | None  # (N, L), one reparameterised draw when asked for


@dataclass(frozen=True)
class Scores:
    """Per image, (N,) each; nats unless named otherwise."""

    elbo: np.ndarray  # the ELBO (k = 1) or the importance-weighted bound (k > 1)
    reconstruction: np.ndarray  # E_q log p(x|z), the mean over the k samples
    kl: np.ndarray
    bits_per_dim: np.ndarray


@dataclass(frozen=True)
class Assessment:
    """What /elbo says of each image for one anomaly score at one false-positive rate.
    Thresholds and percentiles are None when the score's calibration does not hold here
    (the manifest lacks it, or the PNG encoder does not reproduce it): `problem` says why."""

    score: scores.Score
    bounds: Scores
    statistics: Statistics  # what the scores are made of; the PNG code length and the
    # pixel entropy only for the scores that use them
    anomaly_score: np.ndarray  # (N,), higher is more anomalous
    threshold: float | None  # the anomaly score that normal images exceed with p = fpr
    percentile: np.ndarray | None  # (N,)
    problem: str | None

    @property
    def is_anomaly(self) -> np.ndarray | None:
        return None if self.threshold is None else self.anomaly_score > self.threshold


def _eps(seed: int | None, n: int, k: int, latent_dim: int) -> np.ndarray:
    """(N, k, L): with a seed every image gets the same eps (see docs/manifest.md)."""
    if seed is None:
        return np.random.default_rng().standard_normal((n, k, latent_dim), dtype=np.float32)
    return np.broadcast_to(bounds.noise(seed, k, latent_dim), (n, k, latent_dim))


async def encode(mv: ModelVersion, x: np.ndarray, *, sample: bool, seed: int | None) -> Encoded:
    """x (N, C, H, W) -> q(z|x) parameters, and z if `sample`."""
    mean, log_var = await mv.encoder.submit(x)
    z = None
    if sample:
        eps = _eps(seed, len(x), 1, mv.manifest.latent_dim)
        z = bounds.reparameterize(mean, log_var, eps)[:, 0]
    return Encoded(mean, log_var, z)


async def decode(mv: ModelVersion, z: np.ndarray) -> np.ndarray:
    """z (N, L) -> pixel means (N, C, H, W) in [0, 1]."""
    (logits,) = await mv.decoder.submit(z)
    return pixel_means(logits, mv.manifest.likelihood)


def prior(seed: int | None, n: int, latent_dim: int, temperature: float) -> np.ndarray:
    """n draws from N(0, temperature² I), (n, L) float32."""
    z = np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)
    return (z * np.float32(temperature)).astype(np.float32, copy=False)


async def elbo(mv: ModelVersion, x: np.ndarray, *, k: int, seed: int | None) -> Scores:
    """Per-image ELBO (k = 1) or importance-weighted bound (k > 1) of x (N, C, H, W)."""
    manifest = mv.manifest
    n, latent, size = len(x), manifest.latent_dim, manifest.input.size
    mean, log_var = await mv.encoder.submit(x)
    z = bounds.reparameterize(mean, log_var, _eps(seed, n, k, latent))  # (N, k, L)
    flat_x = x.reshape(n, 1, size)  # (N, 1, D), broadcast over the k samples
    log_px = np.empty((n, k))
    step = max(1, _DECODE_VALUES // (size * k))  # images per slice
    for start in range(0, n, step):
        stop = min(n, start + step)
        (logits,) = await mv.decoder.submit(z[start:stop].reshape(-1, latent))
        logits = logits.reshape(stop - start, k, size)  # (n', k, D)
        log_px[start:stop] = log_likelihood(flat_x[start:stop], logits, manifest.likelihood)
    kl = bounds.kl(mean, log_var)
    bound = bounds.bound(log_px, kl, z, mean, log_var)
    return Scores(
        elbo=bound,
        reconstruction=log_px.mean(axis=1),
        kl=kl,
        bits_per_dim=bounds.bits_per_dim(bound, size),
    )


async def reconstruct(mv: ModelVersion, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (N, C, H, W) -> the pixel means decoded at z = mean (N, C, H, W) and
    -log p(x_i|z) per pixel, summed over channels (N, H, W): where x departs from the model."""
    manifest = mv.manifest
    mean, _ = await mv.encoder.submit(x)
    (logits,) = await mv.decoder.submit(mean)
    terms = log_likelihood_terms(x, logits, manifest.likelihood)  # (N, C, H, W)
    return pixel_means(logits, manifest.likelihood), -terms.sum(axis=1)


def choose_score(mv: ModelVersion, score: scores.Score | None) -> scores.Score:
    """The score a request asked for, or the version's default (typicality where its
    manifest holds the fitted detector, else elbo); 422 for a typicality it cannot compute."""
    try:
        return scores.choose(mv.manifest.calibration, score)
    except scores.Unusable as exc:
        raise Unprocessable(f"{mv.name} version {mv.version}: {exc}") from None


def importance_samples(mv: ModelVersion, score: scores.Score, k: int | None, max_k: int) -> int:
    """The k a request asked for, or the one its score was calibrated at; within the limit."""
    k = scores.default_k(mv.manifest.calibration, score) if k is None else k
    if k > max_k:
        raise Unprocessable(f"k={k} is above the limit of {max_k}")
    return k


async def assess(
    mv: ModelVersion, x: np.ndarray, *, k: int, seed: int | None, score: scores.Score, fpr: float
) -> Assessment:
    """x (N, C, H, W) -> its bounds, anomaly scores, and where they sit in the calibration.
    `score` as choose_score resolved it."""
    manifest = mv.manifest
    calibration = manifest.calibration
    found = await elbo(mv, x, k=k, seed=seed)
    bits, entropy = None, None
    if score in ("complexity", "typicality"):  # the PNG encoder blocks: off the event loop
        bits, entropy = await asyncio.to_thread(scores.image_statistics, x, score)
    statistics = Statistics(found.elbo, found.kl, bits, entropy)
    anomaly = scores.anomaly(score, statistics, calibration)
    problem = scores.calibration_problem(calibration, score, manifest.input.shape)
    return Assessment(
        score=score,
        bounds=found,
        statistics=statistics,
        anomaly_score=anomaly,
        threshold=None if problem else scores.threshold(calibration, score, fpr),
        percentile=None if problem else scores.percentile(calibration, score, anomaly),
        problem=problem,
    )
