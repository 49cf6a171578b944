"""What the endpoints compute: batched graph calls plus the numpy maths of vae_contract.

Inputs arrive validated; each entry point is counted in app.statistics under the
protocol model that answers its question. Each function awaits the version's batchers, so
concurrent requests share ONNX Runtime calls. Each first takes its cost in rows
from the version's budget (`mv.admit`): one row per image through the encoder
and per latent through the decoder, the units of VAE_MAX_QUEUE. Numpy work
on more than a few thousand values runs on a worker thread, so one large
request never stalls the event loop for the others.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import ParamSpec, TypeVar

import numpy as np

from app.errors import Unprocessable
from app.registry import ModelVersion
from app.statistics import counted
from vae_contract import bounds, maps, scores
from vae_contract import calibration as rule
from vae_contract.likelihood import log_likelihood, pixel_means
from vae_contract.manifest import Likelihood
from vae_contract.scores import Statistics

# /elbo decodes at most this many values (rows × D) per batcher submission, so a
# request with large k holds a bounded slice of logits (and of their float64
# likelihood terms, 4 MiB each) in memory at a time.
_SLICE_VALUES = 1 << 19
# Numpy work on fewer values stays on the event loop: a worker-thread hop would
# cost the loop more than the work itself.
_INLINE_VALUES = 1 << 14

P = ParamSpec("P")
T = TypeVar("T")


async def _numpy(values: int, work: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """work(*args, **kwargs), on a worker thread when it touches more than a few
    thousand values."""
    if values <= _INLINE_VALUES:
        return work(*args, **kwargs)
    return await asyncio.to_thread(work, *args, **kwargs)


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


@counted("encoder")
async def encode(mv: ModelVersion, x: np.ndarray, *, sample: bool, seed: int | None) -> Encoded:
    """x (N, C, H, W) -> q(z|x) parameters, and z if `sample`."""
    with mv.admit(len(x)):
        mean, log_var = await mv.encoder.submit(x)
    if mv.drift is not None:  # VAE_DRIFT_SAMPLE_RATE: perhaps scored too, in the background
        mv.drift.offer(mv, x)
    z = None
    if sample:
        eps = _eps(seed, len(x), 1, mv.manifest.latent_dim)
        z = bounds.reparameterize(mean, log_var, eps)[:, 0]
    return Encoded(mean, log_var, z)


@counted("decoder")
async def decode(mv: ModelVersion, z: np.ndarray) -> np.ndarray:
    """z (N, L) -> pixel means (N, C, H, W) in [0, 1]."""
    with mv.admit(len(z)):
        (logits,) = await mv.decoder.submit(z)
    return await _numpy(logits.size, pixel_means, logits, mv.manifest.likelihood)


def prior(seed: int | None, n: int, latent_dim: int, temperature: float) -> np.ndarray:
    """n draws from N(0, temperature² I), (n, L) float32."""
    z = np.random.default_rng(seed).standard_normal((n, latent_dim), dtype=np.float32)
    return (z * np.float32(temperature)).astype(np.float32, copy=False)


async def elbo(mv: ModelVersion, x: np.ndarray, *, k: int, seed: int | None) -> Scores:
    """Per-image ELBO (k = 1) or importance-weighted bound (k > 1) of x (N, C, H, W)."""
    manifest = mv.manifest
    n, latent, size = len(x), manifest.latent_dim, manifest.input.size
    logits_size = int(np.prod(manifest.logits_shape))
    with mv.admit(n * (1 + k)):  # N encoder rows, N·k decoder rows
        mean, log_var = await mv.encoder.submit(x)
        z = await _numpy(n * k * latent, _draw, mean, log_var, seed, k)  # (N, k, L)
        flat_x = x.reshape(n, 1, size)  # (N, 1, D), broadcast over the k samples
        log_px = np.empty((n, k))
        step = max(1, _SLICE_VALUES // (logits_size * k))  # images per slice
        for start in range(0, n, step):
            stop = min(n, start + step)
            (logits,) = await mv.decoder.submit(z[start:stop].reshape(-1, latent))
            logits = logits.reshape(stop - start, k, -1)  # (n', k, P·D)
            log_px[start:stop] = await _numpy(
                logits.size, log_likelihood, flat_x[start:stop], logits, manifest.likelihood
            )
    return await _numpy(z.size, _scores, log_px, z, mean, log_var, size)


def _draw(mean: np.ndarray, log_var: np.ndarray, seed: int | None, k: int) -> np.ndarray:
    """k reparameterised draws per image, z (N, k, L)."""
    return bounds.reparameterize(mean, log_var, _eps(seed, len(mean), k, mean.shape[1]))


def _scores(
    log_px: np.ndarray, z: np.ndarray, mean: np.ndarray, log_var: np.ndarray, size: int
) -> Scores:
    """The bound and its parts from log p(x|z) (N, k) and the draws z (N, k, L)."""
    kl = bounds.kl(mean, log_var)
    bound = bounds.bound(log_px, kl, z, mean, log_var)
    return Scores(
        elbo=bound,
        reconstruction=log_px.mean(axis=1),
        kl=kl,
        bits_per_dim=bounds.bits_per_dim(bound, size),
    )


@dataclass(frozen=True)
class Maps:
    """Where images depart from the model, per pixel (vae_contract.maps)."""

    means: np.ndarray  # (N, C, H, W) in [0, 1], decoded at z = mean of q(z|x)
    nats: np.ndarray  # (N, H, W) -log p(x_i|z), summed over channels
    deviation: np.ndarray | None  # (N, H, W) the two-sided map, in standard deviations


@counted("elbo")
async def reconstruct(mv: ModelVersion, x: np.ndarray, *, two_sided: bool) -> Maps:
    """x (N, C, H, W) -> its reconstruction and maps; the two-sided one if asked (for
    a discretised logistic it sums over all 256 values of each sub-pixel)."""
    with mv.admit(2 * len(x)):
        mean, _ = await mv.encoder.submit(x)
        (logits,) = await mv.decoder.submit(mean)
    work = logits.size * (256 if two_sided else 1)
    return await _numpy(work, _maps, x, logits, mv.manifest.likelihood, two_sided)


def _maps(x: np.ndarray, logits: np.ndarray, likelihood: Likelihood, two_sided: bool) -> Maps:
    surprise = maps.nats(x, logits, likelihood)
    deviation = maps.deviation(surprise, logits, likelihood) if two_sided else None
    return Maps(pixel_means(logits, likelihood), surprise, deviation)


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


@counted("elbo")
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
    # Too few held-out images for a threshold at this fpr withholds it, not the percentiles.
    withheld = problem or rule.threshold_problem(calibration, score, fpr)
    percentile = None if problem else scores.percentile(calibration, score, anomaly)
    mv.scored(score, len(x), percentile)  # the anomaly signal's metrics
    return Assessment(
        score=score,
        bounds=found,
        statistics=statistics,
        anomaly_score=anomaly,
        threshold=None if withheld else scores.threshold(calibration, score, fpr),
        percentile=percentile,
        problem=withheld,
    )
