"""32×32 crops of the photos and textures that ship inside scikit-image's wheel,
training crops and held-out crops cut from disjoint regions of each image.

Each image is split at 3/4 of its width: training crops lie wholly in the left
three quarters, held-out crops wholly in the right quarter, so no held-out pixel
was ever seen in training (crops within a region overlap one another).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Literal

import numpy as np
from PIL import Image
from skimage import data as skdata

# The colour photos of skimage.data that need no download, halved so that a 32×32
# crop holds parts of objects (an eye, a window) rather than one flat colour.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry")
TEXTURES = ("brick", "grass", "gravel")  # grey, 512×512
SIZE = 32
TRAIN_SHARE = 0.75
Region = Literal["train", "held_out"]


@functools.cache
def image(name: str) -> np.ndarray:
    """(C, H, W) uint8: a photo halved in each direction, or a texture as it ships."""
    pixels = getattr(skdata, name)()
    if name in PHOTOS:
        return np.asarray(Image.fromarray(pixels).reduce(2)).transpose(2, 0, 1).copy()
    return np.asarray(pixels, np.uint8)[None]


def crops(names: tuple[str, ...], n: int, region: Region, seed: int) -> np.ndarray:
    """n crops (n, C, SIZE, SIZE) uint8, spread evenly over the images, at seeded
    random positions in the region."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pixels = image(names[i % len(names)])
        _, h, w = pixels.shape
        split = int(w * TRAIN_SHARE)
        low, high = (0, split - SIZE) if region == "train" else (split, w - SIZE)
        left = int(rng.integers(low, high + 1))
        top = int(rng.integers(0, h - SIZE + 1))
        out.append(pixels[:, top : top + SIZE, left : left + SIZE])
    return np.stack(out)


def write_folder(images: np.ndarray, folder: Path) -> Path:
    """Each image as a PNG file, as a user's folder of images would hold them."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, pixels in enumerate(images):
        Image.fromarray(pixels[0] if pixels.shape[0] == 1 else pixels.transpose(1, 2, 0)).save(
            folder / f"{i:05d}.png"
        )
    return folder
