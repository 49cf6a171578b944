"""Anomaly scores, their calibrated thresholds, and the reconstruction-error map,
exactly as docs/manifest.md ("Anomaly scores") defines them. Higher is more anomalous.

- `elbo`: -ELBO (k = 1) or minus the importance-weighted bound (k > 1).
- `iwae`: the same bound, by default at the k it was calibrated with (Burda et al. 2016).
- `complexity`: -bound - ln 2 · L(x), L(x) the PNG code length of x in bits
  (input complexity, Serrà et al. 2020): robust to simple images that a
  likelihood model rates too highly (Nalisnick et al. 2019).
"""

from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
from PIL import Image

from app import vae
from app.manifest import Calibration

Score = Literal["elbo", "iwae", "complexity"]
IW_K = 64  # the iwae score's k when its calibration names none
PNG_LEVEL = 9
# The heat map's colour scale: 0 nats black, through red and yellow, white at and
# above this many nats of -log p(x_i|z) (a pixel value the model gives p ≈ 0.7%).
HEAT_NATS = 5.0


def png_bits(x: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) in [0, 1] -> (N,) float64: 8 · len(PNG of round(255·x)), Pillow,
    8-bit L or RGB, compress_level=9. Blocking: run it off the event loop."""
    as_bytes = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
    bits = np.empty(len(x))
    for i, image in enumerate(as_bytes):
        pixels = image[0] if image.shape[0] == 1 else image.transpose(1, 2, 0)
        out = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(pixels)).save(
            out, format="PNG", compress_level=PNG_LEVEL
        )
        bits[i] = 8 * len(out.getvalue())
    return bits


def anomaly(bound: np.ndarray, bits: np.ndarray | None) -> np.ndarray:
    """The anomaly score from the bound (ELBO or IWAE) and, for complexity, L(x) in bits."""
    score: np.ndarray = -bound if bits is None else -bound - math.log(2.0) * bits
    return score


def default_k(calibration: Calibration | None, score: Score) -> int:
    """The k a score is compared at: the calibrated one (1 for elbo and complexity)."""
    if score != "iwae":
        return 1
    entry = None if calibration is None else calibration.scores.get("iwae")
    return IW_K if entry is None else entry.k


def threshold(calibration: Calibration | None, score: Score, fpr: float) -> float | None:
    """The anomaly score above which a normal image lies with probability `fpr`, or None
    when the manifest does not calibrate this score."""
    if calibration is None:
        return None
    if score == "elbo":  # calibrated as the ELBO itself: its fpr-quantile, negated
        return -vae.threshold(calibration, fpr)
    entry = calibration.scores.get(score)
    if entry is None:
        return None
    return float(np.interp(1.0 - fpr, calibration.levels, entry.quantiles))


def percentile(calibration: Calibration | None, score: Score, s: np.ndarray) -> np.ndarray | None:
    """Per image, the percentage of held-out normal images that score at least as
    anomalous (0-100; low is unusual). For elbo: where the ELBO sits among theirs."""
    if calibration is None:
        return None
    if score == "elbo":
        return vae.percentile(calibration, -s)
    entry = calibration.scores.get(score)
    if entry is None:
        return None
    result: np.ndarray = 100.0 * (1.0 - np.interp(s, entry.quantiles, calibration.levels))
    return result


def _heat(nats: np.ndarray) -> np.ndarray:
    """(H, W) nats -> (3, H, W) in [0, 1], the 'hot' ramp: black, red, yellow, white."""
    t = np.clip(nats / HEAT_NATS, 0.0, 1.0)
    return np.stack([np.clip(3 * t - i, 0.0, 1.0) for i in range(3)])


def _rgb(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, 3, H, W): RGB as is, anything else as its grey mean."""
    if images.shape[1] == 3:
        return images
    return np.repeat(images.mean(axis=1, keepdims=True), 3, axis=1)


def map_png(x: np.ndarray, means: np.ndarray, nats: np.ndarray, zoom: int) -> bytes:
    """One row per image: input | reconstruction | -log p(x_i|z) heat map, as an RGB PNG
    of N·H·zoom × 3·W·zoom pixels. x, means (N, C, H, W) in [0, 1]; nats (N, H, W)."""
    n, _, h, w = x.shape
    rows = np.concatenate([_rgb(x), _rgb(means), np.stack([_heat(m) for m in nats])], axis=3)
    tile = rows.transpose(1, 0, 2, 3).reshape(3, n * h, 3 * w)  # rows stacked vertically
    tile = tile.repeat(zoom, axis=1).repeat(zoom, axis=2)
    image = Image.fromarray(np.rint(tile * 255.0).astype(np.uint8).transpose(1, 2, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
