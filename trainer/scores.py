"""The anomaly scores of held-out or test images, computed on the exported graphs
with the contract's maths (vae_contract), so they are the numbers the service's
/elbo gives for the same pixels. Calibration and the scores' definitions live in
vae_contract.scores; this module only runs the graphs over many images.
"""

from __future__ import annotations

import numpy as np

from trainer.evaluate import Graphs
from vae_contract import bounds
from vae_contract.likelihood import log_likelihood
from vae_contract.manifest import Likelihood
from vae_contract.scores import IW_K, SCORES, anomaly, png_bits


def bound(
    graphs: Graphs,
    likelihood: Likelihood,
    x: np.ndarray,
    k: int = 1,
    seed: int = 0,
    rows_per_call: int = 20000,
) -> np.ndarray:
    """Per image (N,) float64: the ELBO (k = 1, closed-form KL) or the importance-weighted
    bound (k > 1) of x (N, C, H, W) in [0, 1], with the service's noise (the same eps
    for every image, so a score never depends on its batch-mates)."""
    n, size = len(x), int(np.prod(x.shape[1:]))
    batch = max(1, rows_per_call // k)
    out = []
    for start in range(0, n, batch):
        xb = x[start : start + batch]
        mean, log_var = graphs.run_encoder(xb)  # (B, L)
        latent = mean.shape[1]
        z = bounds.reparameterize(mean, log_var, bounds.noise(seed, k, latent))  # (B, k, L)
        logits = graphs.run_decoder(z.reshape(-1, latent)).reshape(len(xb), k, size)
        log_px = log_likelihood(xb.reshape(len(xb), 1, size), logits, likelihood)  # (B, k)
        out.append(bounds.bound(log_px, bounds.kl(mean, log_var), z, mean, log_var))
    return np.concatenate(out)


def anomaly_scores(
    graphs: Graphs,
    likelihood: Likelihood,
    images: np.ndarray,
    names: tuple[str, ...] = SCORES,
    k: int = IW_K,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """uint8 images (N, C, H, W) -> {score name: (N,) float64}, k for iwae only."""
    x = np.asarray(images, np.float32) / np.float32(255)  # unbinarised, as served
    scores: dict[str, np.ndarray] = {}
    if "elbo" in names or "complexity" in names:
        elbo = bound(graphs, likelihood, x, 1, seed)
        if "elbo" in names:
            scores["elbo"] = anomaly(elbo, None)
        if "complexity" in names:
            scores["complexity"] = anomaly(elbo, png_bits(x))
    if "iwae" in names:
        scores["iwae"] = anomaly(bound(graphs, likelihood, x, k, seed), None)
    return scores
