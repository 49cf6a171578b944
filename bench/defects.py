"""Defects painted into 32×32 grey texture crops, each with its mask, at sizes and
contrasts fixed before anything was measured (docs/inspection.md lists them):

- scratch: a straight line 2 px wide and 20 px long at a random angle, each pixel
  100 levels brighter (clipped at 255): a bright score on the surface;
- hole: a disc of radius 4 px (50 px) set to level 10: a dark pit;
- patch: a disc of radius 6 px (113 px) of another texture (brick → gravel,
  grass → brick, gravel → grass), its mean and standard deviation matched to the
  crop's, so it differs in structure, not in brightness;
- smudge: a disc of radius 6 px where the texture is replaced by its Gaussian blur
  (σ = 3 px): the local mean stays, the texture goes.

Every defect lies wholly inside the crop, its centre drawn uniformly where it fits.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from scipy import ndimage

from bench.crops import SIZE, crops

Kind = Literal["scratch", "hole", "patch", "smudge"]
KINDS: tuple[Kind, ...] = ("scratch", "hole", "patch", "smudge")
SCRATCH_LENGTH, SCRATCH_WIDTH, SCRATCH_CONTRAST = 20, 2, 100
HOLE_RADIUS, HOLE_LEVEL = 4, 10
PATCH_RADIUS = 6
SMUDGE_RADIUS, SMUDGE_SIGMA = 6, 3.0
OTHER = {"brick": "gravel", "grass": "brick", "gravel": "grass"}

_Y, _X = np.mgrid[0:SIZE, 0:SIZE]


def _disc(rng: np.random.Generator, radius: int) -> np.ndarray:
    cy, cx = rng.integers(radius, SIZE - radius, size=2)
    return (_Y - cy) ** 2 + (_X - cx) ** 2 <= radius**2


def _scratch(rng: np.random.Generator) -> np.ndarray:
    angle = rng.uniform(0, np.pi)
    dy, dx = np.sin(angle), np.cos(angle)
    half = SCRATCH_LENGTH / 2
    margin = int(np.ceil(half * max(abs(dy), abs(dx)))) + 1
    cy, cx = rng.integers(margin, SIZE - margin, size=2)
    along = (_Y - cy) * dy + (_X - cx) * dx
    across = -(_Y - cy) * dx + (_X - cx) * dy
    mask: np.ndarray = (np.abs(along) <= half) & (np.abs(across) <= SCRATCH_WIDTH / 2)
    return mask


def paint(
    image: np.ndarray, kind: Kind, rng: np.random.Generator, other: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """A (1, H, W) uint8 crop with one defect of `kind`, and its (H, W) bool mask;
    `other` is a crop of another texture, for the patch."""
    x = image[0].astype(np.float64)
    if kind == "scratch":
        mask = _scratch(rng)
        painted = np.where(mask, x + SCRATCH_CONTRAST, x)
    elif kind == "hole":
        mask = _disc(rng, HOLE_RADIUS)
        painted = np.where(mask, HOLE_LEVEL, x)
    elif kind == "patch":
        mask = _disc(rng, PATCH_RADIUS)
        source = other[0].astype(np.float64)
        matched = (source - source.mean()) / max(source.std(), 1e-6) * x.std() + x.mean()
        painted = np.where(mask, matched, x)
    else:
        mask = _disc(rng, SMUDGE_RADIUS)
        painted = np.where(mask, ndimage.gaussian_filter(x, SMUDGE_SIGMA, mode="reflect"), x)
    return np.clip(np.rint(painted), 0, 255).astype(np.uint8)[None], mask


def defective(texture: str, kind: Kind, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n held-out crops of `texture` with a `kind` defect each: (n, 1, H, W) uint8 and
    their masks (n, H, W) bool."""
    rng = np.random.default_rng(seed)
    clean = crops((texture,), n, "held_out", seed)
    others = crops((OTHER[texture],), n, "held_out", seed + 1)
    painted = [paint(c, kind, rng, o) for c, o in zip(clean, others, strict=True)]
    return np.stack([p for p, _ in painted]), np.stack([m for _, m in painted])
