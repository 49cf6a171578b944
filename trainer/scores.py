"""Anomaly scores, computed exactly as the service's /elbo computes them
(docs/manifest.md, "Anomaly scores"); higher is more anomalous.

- `elbo`: -ELBO, one sample, closed-form KL.
- `iwae`: minus the importance-weighted bound with k samples (Burda et al. 2016).
- `complexity`: -ELBO - ln 2 · L(x), with L(x) the code length in bits of x
  compressed as a PNG (input complexity, Serrà et al. 2020). It answers the
  failure Nalisnick et al. (2019) found: simple images (MNIST) get a higher
  likelihood than the data a model was trained on (Fashion-MNIST), because
  likelihoods mostly measure how compressible an image is.

The calibration written into the manifest holds the quantiles of each score
on held-out normal images: the service's thresholds and percentiles.
"""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import PIL
import torch
from PIL import Image, features

from trainer.evaluate import Decode, Encode
from trainer.likelihood import Likelihood, log_prob
from trainer.objectives import iwae, kl, log_weights, reparameterize

SCORES = ("elbo", "iwae", "complexity")
IW_K = 64  # importance samples the iwae score is calibrated at
PNG_LEVEL = 9
LEVELS = [0.0, 0.001, 0.002, 0.005, *[i / 100 for i in range(1, 100)], 0.995, 0.998, 0.999, 1.0]


def png_bits(images: np.ndarray) -> np.ndarray:
    """uint8 (N, C, H, W) -> (N,) float64: 8 · len(PNG file), Pillow, compress_level=9."""
    bits = np.empty(len(images))
    for i, image in enumerate(images):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)  # L or RGB
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(
            out, format="PNG", compress_level=PNG_LEVEL
        )
        bits[i] = 8 * len(out.getvalue())
    return bits


def compressor() -> dict[str, Any]:
    """What made the code lengths: zlib builds may differ in a byte or two."""
    return {
        "format": "png",
        "library": f"Pillow {PIL.__version__}",
        "zlib": features.version("zlib"),
        "compress_level": PNG_LEVEL,
    }


@torch.no_grad()
def bound(
    encode: Encode,
    decode: Decode,
    likelihood: Likelihood,
    x: torch.Tensor,
    k: int = 1,
    seed: int = 0,
    rows_per_call: int = 20000,
) -> torch.Tensor:
    """Per image (N,) float64: the ELBO (k = 1, closed-form KL) or the importance-weighted
    bound (k > 1), with the service's noise: eps = default_rng(seed) (k, L), the same for
    every image, so a score never depends on its batch-mates."""
    batch = max(1, rows_per_call // k)
    eps: torch.Tensor | None = None
    out = []
    for start in range(0, len(x), batch):
        xb = x[start : start + batch]
        mean, log_var = encode(xb)  # (B, L)
        if eps is None:
            draw = np.random.default_rng(seed).standard_normal((k, mean.shape[-1]), np.float32)
            eps = torch.from_numpy(draw)
        z = reparameterize(mean, log_var, eps[:, None, :])  # (k, B, L)
        logits = decode(z).double()  # float64 sums, as the service's numpy does
        if k == 1:
            out.append(log_prob(likelihood, xb.double(), logits[0]) - kl(mean, log_var).double())
        else:
            log_w, _ = log_weights(
                likelihood, xb.double(), mean.double(), log_var.double(), z.double(), logits
            )
            out.append(iwae(log_w))
    return torch.cat(out)


def anomaly_scores(
    encode: Encode,
    decode: Decode,
    likelihood: Likelihood,
    images: np.ndarray,
    names: tuple[str, ...] = SCORES,
    k: int = IW_K,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """uint8 images (N, C, H, W) -> {score name: (N,) float64}, k for iwae only."""
    x = torch.from_numpy(np.array(images, np.float32)) / 255  # unbinarised, as served
    scores: dict[str, np.ndarray] = {}
    if "elbo" in names or "complexity" in names:
        elbo = bound(encode, decode, likelihood, x, 1, seed).numpy()
        if "elbo" in names:
            scores["elbo"] = -elbo
        if "complexity" in names:
            scores["complexity"] = -elbo - math.log(2) * png_bits(images)
    if "iwae" in names:
        scores["iwae"] = -bound(encode, decode, likelihood, x, k, seed).numpy()
    return scores


def _quantiles(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in np.quantile(values, LEVELS)]


def calibrate(scores: dict[str, np.ndarray], k: int = IW_K, seed: int = 0) -> dict[str, Any]:
    """The manifest's `calibration`: quantiles of each score on held-out normal images.

    The plain ELBO keeps its historical form (`elbo_quantiles`, of the ELBO itself);
    every other score is under `scores`, as quantiles of the anomaly score.
    """
    calibration: dict[str, Any] = {
        "split": "validation",
        "n": len(scores["elbo"]),
        "k": 1,
        "seed": seed,
        "statistic": "elbo",
        "levels": LEVELS,
        "elbo_quantiles": _quantiles(-scores["elbo"]),
    }
    extra: dict[str, Any] = {}
    if "iwae" in scores:
        extra["iwae"] = {"k": k, "quantiles": _quantiles(scores["iwae"])}
    if "complexity" in scores:
        extra["complexity"] = {
            "k": 1,
            "compressor": compressor(),
            "quantiles": _quantiles(scores["complexity"]),
        }
    if extra:
        calibration["scores"] = extra
    return calibration
