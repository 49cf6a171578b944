"""Anomaly scores and their calibration, as docs/manifest.md ("Anomaly scores",
"Calibration") defines them. Higher is more anomalous.

- `typicality` (the default): the squared Mahalanobis distance of an image's
  statistics (ELBO, KL, PNG code length, pixel entropy) from those of held-out
  normal images (vae_contract.typicality; DoSE, Morningstar et al. 2021).
- `elbo`: -ELBO (k = 1) or minus the importance-weighted bound (k > 1).
- `iwae`: the same bound, by default at the k it was calibrated with (Burda et al. 2016).
- `complexity`: -bound - ln 2 · L(x), L(x) the PNG code length of x in bits
  (input complexity, Serrà et al. 2020): robust to simple images that a
  likelihood model rates too highly (Nalisnick et al. 2019).

The trainer calibrates (quantiles of each score on held-out normal images, and
the typicality detector's fit); the service turns a request's false-positive
rate into a threshold and an image's score into a percentile, and checks that it
can reproduce what a calibration depends on. Both call these functions.
"""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import PIL
from PIL import Image, features

from vae_contract import calibration as rule
from vae_contract import typicality
from vae_contract.manifest import Calibration, Compressor, Gaussian

Score = Literal["typicality", "elbo", "iwae", "complexity"]
SCORES: tuple[Score, ...] = ("typicality", "elbo", "iwae", "complexity")
IW_K = 64  # the iwae score's k when its calibration names none
PNG_LEVEL = 9
# The calibration's quantile levels: dense in the tails, where thresholds live.
LEVELS = [0.0, 0.001, 0.002, 0.005, *[i / 100 for i in range(1, 100)], 0.995, 0.998, 0.999, 1.0]
# The statistics a typicality detector may name: the fields of `Statistics`.
STATISTICS = ("elbo", "kl", "complexity_bits", "pixel_entropy")
# The typicality detector is fitted on one half of the held-out images, and its
# quantiles are measured on the other, so thresholds are not fitted to themselves.
FIT, MEASURE = slice(0, None, 2), slice(1, None, 2)


class Unusable(ValueError):
    """A score this version cannot compute; the message says why and what to do."""


@dataclass(frozen=True)
class Statistics:
    """Per image, (N,) float64 each: what the anomaly scores are made of."""

    elbo: np.ndarray  # the bound at the score's k
    kl: np.ndarray
    complexity_bits: np.ndarray | None = None
    pixel_entropy: np.ndarray | None = None

    def table(self, names: list[str]) -> np.ndarray:
        """(N, d): the named statistics as columns."""
        columns = [getattr(self, name) for name in names]
        if any(column is None for column in columns):
            raise ValueError(f"statistics {names} were not all computed")
        return np.stack(columns, axis=1)

    def take(self, index: slice) -> Statistics:
        def cut(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return Statistics(
            self.elbo[index], self.kl[index], cut(self.complexity_bits), cut(self.pixel_entropy)
        )


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


def pixel_entropy(x: np.ndarray) -> np.ndarray:
    """x (N, C, H, W) in [0, 1] -> (N,) float64: Σ_i H(x_i) in nats, H(p) = -p ln p -
    (1 - p) ln(1 - p), 0 ln 0 = 0. The least -log p(x|z) any Bernoulli decoder can
    give x: grey values cost it at least this much, however good the model."""
    p = x.reshape(len(x), -1).astype(np.float64)
    q = 1.0 - p
    terms = p * np.log(np.where(p > 0, p, 1.0)) + q * np.log(np.where(q > 0, q, 1.0))
    result: np.ndarray = -terms.sum(axis=1)
    return result


def image_statistics(x: np.ndarray, score: Score) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(complexity_bits, pixel_entropy) of x (N, C, H, W) as far as `score` needs them.
    Blocking (the PNG encoder): the service runs it off the event loop."""
    bits = png_bits(x) if score in ("complexity", "typicality") else None
    entropy = pixel_entropy(x) if score == "typicality" else None
    return bits, entropy


def probe_images(shape: tuple[int, int, int]) -> np.ndarray:
    """(4, C, H, W) in [0, 1]: fixed patterns, neither blank nor noise, whose PNG code
    lengths show whether a compressor writes as the one a calibration used did
    (zlib builds and Pillow versions may differ by a few bytes). Integer arithmetic
    only, so every machine draws the same pixels."""
    c, h, w = shape
    y, x = np.mgrid[0:h, 0:w]
    images = []
    for i in range(4):
        levels = 5 + 4 * i
        pattern = x * (i + 1) + y * y * (i + 2) + (x * y) // (i + 1)
        images.append([(pattern + 3 * channel) % levels / (levels - 1) for channel in range(c)])
    return np.asarray(images, np.float32)


@functools.lru_cache(maxsize=16)
def _probe(shape: tuple[int, int, int]) -> tuple[float, ...]:
    return tuple(png_bits(probe_images(shape)).tolist())


def compressor(shape: tuple[int, int, int]) -> dict[str, Any]:
    """What makes the code lengths here, and the probe's code lengths at this image shape."""
    return {
        "format": "png",
        "library": f"Pillow {PIL.__version__}",
        "zlib": features.version("zlib"),
        "compress_level": PNG_LEVEL,
        "probe": list(_probe(shape)),
    }


def compressor_problem(recorded: Compressor, shape: tuple[int, int, int]) -> str | None:
    """Why this service cannot reproduce the code lengths a calibration was made with,
    or None when it can: the same level, and the same probe code lengths (or, for a
    calibration that recorded no probe, the same zlib)."""
    here = compressor(shape)
    made_with = f"{recorded.library}, zlib {recorded.zlib}"
    made_here = f"{here['library']}, zlib {here['zlib']}"
    if recorded.compress_level != PNG_LEVEL:
        return (
            f"calibrated with PNG compress_level {recorded.compress_level}; "
            f"this service writes level {PNG_LEVEL}"
        )
    if recorded.probe is None and recorded.zlib != here["zlib"]:
        return f"calibrated with {made_with}, this service has {made_here} and no probe to compare"
    if recorded.probe is not None and recorded.probe != here["probe"]:
        return (
            f"the PNG code lengths here differ from the calibration's (probe images: "
            f"{here['probe']} bits with {made_here}, {recorded.probe} with {made_with}); "
            "recalibrate with vae-calibrate on this machine"
        )
    return None


def detector(calibration: Calibration | None) -> Gaussian:
    """The typicality score's fitted Gaussian; raises Unusable when this version has none
    that this service can evaluate."""
    entry = None if calibration is None else calibration.scores.get("typicality")
    if entry is None or entry.gaussian is None:
        why = None if calibration is None else calibration.problems.get("typicality")
        raise Unusable(
            "score=typicality needs the detector fitted by the calibration, which this "
            + (
                f"version's calibration could not fit ({why}): calibrate on more normal "
                "images with vae-calibrate --normal FOLDER"
                if why
                else "version's manifest lacks (calibrated before the score existed): add it "
                "with vae-calibrate"
            )
            + ", or ask for score=elbo, iwae or complexity"
        )
    unknown = sorted(set(entry.gaussian.statistics) - set(STATISTICS))
    if unknown:
        raise Unusable(
            f"this version's typicality detector uses statistics {unknown}, "
            f"which this service does not compute (it knows {list(STATISTICS)})"
        )
    return entry.gaussian


def choose(calibration: Calibration | None, score: Score | None) -> Score:
    """The score asked for, or by default typicality where the version can compute it
    and elbo where it cannot (versions calibrated before it). Raises Unusable for an
    explicit typicality the version cannot compute."""
    if score is None:
        try:
            detector(calibration)
        except Unusable:
            return "elbo"
        return "typicality"
    if score == "typicality":
        detector(calibration)
    return score


def calibration_problem(
    calibration: Calibration | None, score: Score, shape: tuple[int, int, int]
) -> str | None:
    """Why a score's thresholds and percentiles are withheld for this version, or None
    when its calibration holds here."""
    if calibration is None:
        return "the manifest has no calibration"
    if score == "elbo":
        return None
    entry = calibration.scores.get(score)
    if entry is None:
        return f"the manifest does not calibrate score={score} (vae-calibrate adds it)"
    if score in ("complexity", "typicality"):
        if entry.compressor is None:
            return f"the calibration of score={score} does not record its PNG compressor"
        return compressor_problem(entry.compressor, shape)
    return None


def anomaly(score: Score, stats: Statistics, calibration: Calibration | None = None) -> np.ndarray:
    """The anomaly score of each image (N,); typicality needs the calibration's detector."""
    if score in ("elbo", "iwae"):
        result: np.ndarray = -stats.elbo
    elif score == "complexity":
        result = -stats.elbo - math.log(2.0) * stats.table(["complexity_bits"])[:, 0]
    else:
        gaussian = detector(calibration)
        result = typicality.distance(gaussian, stats.table(gaussian.statistics))
    return result


def default_k(calibration: Calibration | None, score: Score) -> int:
    """The k a score is compared at: the calibrated one (1 for all but iwae)."""
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


def _typicality(
    held_out: Statistics, compressor: dict[str, Any], split: str
) -> dict[str, Any] | str:
    """The typicality entry: the detector fitted on FIT, its quantiles measured on
    MEASURE; or why not, when the held-out images are too few or too alike to fit it."""
    fitted, measured = held_out.take(FIT), held_out.take(MEASURE)
    try:
        gaussian = typicality.fit(fitted.table(list(STATISTICS)), STATISTICS, f"{split}[0::2]")
    except ValueError as e:
        return f"no detector fitted on {len(fitted.elbo)} held-out images: {e}"
    detector = Gaussian.model_validate(gaussian)
    distances = typicality.distance(detector, measured.table(detector.statistics))
    return {
        "k": 1,
        "images": f"{split}[1::2]",
        "n": len(distances),
        "compressor": compressor,
        "gaussian": gaussian,
        "quantiles": _quantiles(distances),
    }


def calibrate(
    held_out: Statistics,
    shape: tuple[int, int, int],
    iwae: np.ndarray | None = None,
    k: int = IW_K,
    seed: int = 0,
    split: str = "validation",
) -> dict[str, Any]:
    """The manifest's `calibration` from the statistics (k = 1) of held-out normal images
    (C, H, W) = `shape`, and their importance-weighted bound at `k` if given. `split`
    names the images: the trainer's validation split, or "normal" (vae-calibrate --normal).

    The plain ELBO keeps its historical form (`elbo_quantiles`, of the ELBO itself);
    every other score is under `scores`, as quantiles of the anomaly score.
    """
    calibration: dict[str, Any] = {
        "split": split,
        "n": len(held_out.elbo),
        "k": 1,
        "seed": seed,
        "statistic": "elbo",
        "levels": LEVELS,
        "elbo_quantiles": _quantiles(held_out.elbo),
    }
    extra: dict[str, Any] = {}
    problems: dict[str, str] = {}
    if held_out.complexity_bits is not None and held_out.pixel_entropy is not None:
        entry = _typicality(held_out, compressor(shape), split)
        if isinstance(entry, str):
            problems["typicality"] = entry
        else:
            extra["typicality"] = entry
    if iwae is not None:
        extra["iwae"] = {"k": k, "quantiles": _quantiles(-iwae)}
    if held_out.complexity_bits is not None:
        extra["complexity"] = {
            "k": 1,
            "compressor": compressor(shape),
            "quantiles": _quantiles(anomaly("complexity", held_out)),
        }
    if extra:
        calibration["scores"] = extra
    counts = {"elbo": len(held_out.elbo)} | {
        name: entry.get("n", len(held_out.elbo)) for name, entry in extra.items()
    }
    calibration["min_tail"] = rule.MIN_TAIL
    calibration["problems"] = rule.recorded(counts) | problems
    return calibration
