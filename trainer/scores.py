"""The anomaly scores of held-out or test images, computed on the exported graphs
with the contract's maths (vae_contract), so they are the numbers the service's
/elbo gives for the same pixels. Calibration and the scores' definitions live in
vae_contract.scores; this module only runs the graphs over many images.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from trainer.evaluate import Graphs
from vae_contract import bounds
from vae_contract.likelihood import log_likelihood
from vae_contract.manifest import Calibration, Likelihood
from vae_contract.scores import (
    IW_K,
    SCORES,
    Score,
    Statistics,
    anomaly,
    calibrate,
    image_statistics,
)


def bound(
    graphs: Graphs,
    likelihood: Likelihood,
    x: np.ndarray,
    k: int = 1,
    seed: int = 0,
    rows_per_call: int = 20000,
) -> tuple[np.ndarray, np.ndarray]:
    """Per image (N,) float64: the ELBO (k = 1, closed-form KL) or the importance-weighted
    bound (k > 1) of x (N, C, H, W) in [0, 1], and the KL, with the service's noise (the
    same eps for every image, so a score never depends on its batch-mates)."""
    n, size = len(x), int(np.prod(x.shape[1:]))
    batch = max(1, rows_per_call // k)
    bounds_out, kls = [], []
    for start in range(0, n, batch):
        xb = x[start : start + batch]
        mean, log_var = graphs.run_encoder(xb)  # (B, L)
        latent = mean.shape[1]
        z = bounds.reparameterize(mean, log_var, bounds.noise(seed, k, latent))  # (B, k, L)
        logits = graphs.run_decoder(z.reshape(-1, latent)).reshape(len(xb), k, -1)  # (B, k, P·D)
        log_px = log_likelihood(xb.reshape(len(xb), 1, size), logits, likelihood)  # (B, k)
        kl = bounds.kl(mean, log_var)
        bounds_out.append(bounds.bound(log_px, kl, z, mean, log_var))
        kls.append(kl)
    return np.concatenate(bounds_out), np.concatenate(kls)


def statistics(
    graphs: Graphs,
    likelihood: Likelihood,
    images: np.ndarray,
    seed: int = 0,
    score: Score = "typicality",
) -> Statistics:
    """uint8 images (N, C, H, W) -> their statistics at k = 1, as /elbo computes them for
    `score` (typicality: all of them)."""
    x = np.asarray(images, np.float32) / np.float32(255)  # unbinarised, as served
    elbo, kl = bound(graphs, likelihood, x, 1, seed)
    return Statistics(elbo, kl, *image_statistics(x, score))


def anomaly_scores(
    graphs: Graphs,
    likelihood: Likelihood,
    images: np.ndarray,
    names: tuple[Score, ...] = SCORES,
    k: int = IW_K,
    seed: int = 0,
    calibration: Calibration | None = None,
) -> dict[str, np.ndarray]:
    """uint8 images (N, C, H, W) -> {score name: (N,) float64}; k for iwae only; typicality
    needs the calibration that holds its detector."""
    scores: dict[str, np.ndarray] = {}
    if set(names) - {"iwae"}:
        widest: Score = next((s for s in ("typicality", "complexity") if s in names), "elbo")
        stats = statistics(graphs, likelihood, images, seed, widest)
        for name in names:
            if name != "iwae":
                scores[name] = anomaly(name, stats, calibration)
    if "iwae" in names:
        x = np.asarray(images, np.float32) / np.float32(255)
        scores["iwae"] = anomaly("iwae", Statistics(*bound(graphs, likelihood, x, k, seed)))
    return {name: scores[name] for name in names}


def calibration(
    graphs: Graphs,
    likelihood: Likelihood,
    held_out: np.ndarray,
    k: int = IW_K,
    seed: int = 0,
    split: str = "validation",
) -> dict[str, Any]:
    """The manifest's `calibration` from held-out normal uint8 images (N, C, H, W): what
    publishing a version and vae-calibrate both write."""
    x = np.asarray(held_out, np.float32) / np.float32(255)
    iwae, _ = bound(graphs, likelihood, x, k, seed)
    stats = statistics(graphs, likelihood, held_out, seed)
    shape = (held_out.shape[1], held_out.shape[2], held_out.shape[3])
    return calibrate(stats, shape, iwae, k, seed, split)
