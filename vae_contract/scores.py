"""Anomaly scores and their calibration, as docs/manifest.md ("Anomaly scores",
"Calibration") defines them. Higher is more anomalous.

- `elbo`: -ELBO (k = 1) or minus the importance-weighted bound (k > 1).
- `iwae`: the same bound, by default at the k it was calibrated with (Burda et al. 2016).
- `complexity`: -bound - ln 2 · L(x), L(x) the PNG code length of x in bits
  (input complexity, Serrà et al. 2020): robust to simple images that a
  likelihood model rates too highly (Nalisnick et al. 2019).

The trainer calibrates (quantiles of each score on held-out normal images);
the service turns a request's false-positive rate into a threshold and an
image's score into a percentile. Both call these functions.
"""

from __future__ import annotations

import io
import math
from typing import Any, Literal

import numpy as np
import PIL
from PIL import Image, features

from vae_contract.manifest import Calibration

Score = Literal["elbo", "iwae", "complexity"]
SCORES: tuple[Score, ...] = ("elbo", "iwae", "complexity")
IW_K = 64  # the iwae score's k when its calibration names none
PNG_LEVEL = 9
# The calibration's quantile levels: dense in the tails, where thresholds live.
LEVELS = [0.0, 0.001, 0.002, 0.005, *[i / 100 for i in range(1, 100)], 0.995, 0.998, 0.999, 1.0]


def png_bits(x: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) in [0, 1] -> (N,) float64: 8 · len(PNG of round(255·x)), Pillow,
    8-bit L or RGB, compress_level=9. Blocking: the service runs it off the event loop."""
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


def compressor() -> dict[str, Any]:
    """What made the code lengths: zlib builds may differ in a byte or two."""
    return {
        "format": "png",
        "library": f"Pillow {PIL.__version__}",
        "zlib": features.version("zlib"),
        "compress_level": PNG_LEVEL,
    }


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
        return -float(np.interp(fpr, calibration.levels, calibration.elbo_quantiles))
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
        result: np.ndarray = 100.0 * np.interp(-s, calibration.elbo_quantiles, calibration.levels)
        return result
    entry = calibration.scores.get(score)
    if entry is None:
        return None
    result = 100.0 * (1.0 - np.interp(s, entry.quantiles, calibration.levels))
    return result


def _quantiles(values: np.ndarray) -> list[float]:
    return [round(float(v), 4) for v in np.quantile(values, LEVELS)]


def calibrate(scores: dict[str, np.ndarray], k: int = IW_K, seed: int = 0) -> dict[str, Any]:
    """The manifest's `calibration` from each score of held-out normal images.

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
