"""Families of distribution shift for measuring anomaly detection: noise, constant and
synthetic images, and transforms of the normal test images themselves.

Each family maps normal uint8 images (N, C, H, W) and a seeded generator to as many
shifted uint8 images of the same shape, so one normal test set yields every family.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

Images = np.ndarray  # uint8 (N, C, H, W)


@dataclass(frozen=True)
class Family:
    kind: str  # noise, synthetic or transform
    description: str
    make: Callable[[Images, np.random.Generator], Images]


def _u8(a: np.ndarray) -> Images:
    result: Images = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return result


def _blur(x: Images, _: np.random.Generator) -> Images:
    """A separable binomial filter (1 4 6 4 1)/16: about a Gaussian of sigma 1 pixel."""
    k = np.array([1.0, 4.0, 6.0, 4.0, 1.0]) / 16.0
    h, w = x.shape[2:]
    padded = np.pad(x.astype(np.float64), ((0, 0), (0, 0), (2, 2), (2, 2)))
    rows = sum(k[i] * padded[:, :, :, i : i + w] for i in range(5))
    return _u8(sum(k[i] * rows[:, :, i : i + h, :] for i in range(5)))


def _translate(x: Images, rng: np.random.Generator) -> Images:
    """Each image moved by 4 to 6 pixels along one axis or both (wrapping round)."""
    out = np.empty_like(x)
    for i, image in enumerate(x):
        dy, dx = 0, 0
        while max(abs(dy), abs(dx)) < 4:
            dy, dx = (int(d) for d in rng.integers(-6, 7, 2))
        out[i] = np.roll(image, (dy, dx), axis=(1, 2))
    return out


def _occlude(value: int) -> Callable[[Images, np.random.Generator], Images]:
    def occlude(x: Images, rng: np.random.Generator) -> Images:
        """A square of a third of the side, placed at random inside the central area."""
        out = x.copy()
        h = x.shape[2]
        side = h // 3
        for image in out:
            r, c = rng.integers(h // 7, h - side - h // 7, 2)
            image[:, r : r + side, c : c + side] = value
        return out

    return occlude


def _resample(x: Images, size: tuple[int, int], box: tuple[int, int, int, int] | None) -> Images:
    """Each channel of each image: the box (left, top, right, bottom) resized bilinearly."""
    out = np.empty((*x.shape[:2], size[1], size[0]), np.uint8)
    for i, image in enumerate(x):
        for c, channel in enumerate(image):
            resized = Image.fromarray(channel).resize(size, Image.Resampling.BILINEAR, box)
            out[i, c] = np.asarray(resized)
    return out


def _zoom(x: Images, _: np.random.Generator) -> Images:
    """The central 60% of the image, enlarged to the full size."""
    h, w = x.shape[2:]
    top, left = round(0.2 * h), round(0.2 * w)
    return _resample(x, (w, h), (left, top, w - left, h - top))


def _shrink(x: Images, _: np.random.Generator) -> Images:
    """The image at half its size, in the middle of a black frame."""
    h, w = x.shape[2:]
    small = _resample(x, (w // 2, h // 2), None)
    out = np.zeros_like(x)
    top, left = (h - h // 2) // 2, (w - w // 2) // 2
    out[:, :, top : top + h // 2, left : left + w // 2] = small
    return out


def _pixelate(x: Images, _: np.random.Generator) -> Images:
    """Means of 4×4 blocks, drawn as blocks."""
    n, c, h, w = x.shape
    blocks = x[:, :, : h // 4 * 4, : w // 4 * 4].reshape(n, c, h // 4, 4, w // 4, 4).mean((3, 5))
    out = x.copy()
    out[:, :, : h // 4 * 4, : w // 4 * 4] = _u8(blocks.repeat(4, 2).repeat(4, 3))
    return out


def _stripes(x: Images, rng: np.random.Generator) -> Images:
    """Sinusoidal gratings of random period (3-12 pixels), angle and phase."""
    n, h, w = len(x), x.shape[2], x.shape[3]
    y, xx = np.mgrid[0:h, 0:w]
    angle, period, phase = rng.uniform(0, np.pi, n), rng.uniform(3, 12, n), rng.uniform(0, 6.3, n)
    along = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * y
    wave = 127.5 + 127.5 * np.sin(2 * np.pi * along / period[:, None, None] + phase[:, None, None])
    return _u8(np.broadcast_to(wave[:, None], x.shape))


def _rectangles(x: Images, rng: np.random.Generator) -> Images:
    """One to three filled rectangles of random grey values on black."""
    out = np.zeros_like(x)
    h, w = x.shape[2:]
    for image in out:
        for _ in range(rng.integers(1, 4)):
            top, left = rng.integers(0, h - 4), rng.integers(0, w - 4)
            bottom, right = rng.integers(top + 3, h + 1), rng.integers(left + 3, w + 1)
            image[:, top:bottom, left:right] = rng.integers(64, 256)
    return out


def _cutmix(x: Images, rng: np.random.Generator) -> Images:
    """The top half of one normal image over the bottom half of another."""
    out = x.copy()
    h = x.shape[2]
    out[:, :, h // 2 :] = x[rng.permutation(len(x)), :, h // 2 :]
    return out


FAMILIES: dict[str, Family] = {
    "uniform noise": Family(
        "noise", "iid uniform pixels", lambda x, r: r.integers(0, 256, x.shape).astype(np.uint8)
    ),
    "gaussian noise": Family(
        "noise", "iid N(127.5, 64²) pixels, clipped", lambda x, r: _u8(r.normal(127.5, 64, x.shape))
    ),
    "binary noise": Family(
        "noise",
        "iid black or white pixels, white as often as in the normal images",
        lambda x, r: (255 * (r.random(x.shape) < x.mean() / 255)).astype(np.uint8),
    ),
    "shuffled pixels": Family(
        "noise",
        "a normal image's pixels in random order",
        lambda x, r: np.stack([r.permutation(i.reshape(-1)).reshape(i.shape) for i in x]),
    ),
    "salt and pepper": Family(
        "noise",
        "a normal image, 5% of its pixels set to black or white",
        lambda x, r: np.where(r.random(x.shape) < 0.05, r.choice([0, 255], x.shape), x).astype(
            np.uint8
        ),
    ),
    "added noise": Family(
        "noise",
        "a normal image plus N(0, 25²) per pixel",
        lambda x, r: _u8(x + r.normal(0, 25, x.shape)),
    ),
    "speckle": Family(
        "noise",
        "a normal image times 1 + N(0, 0.5²) per pixel",
        lambda x, r: _u8(x * (1 + r.normal(0, 0.5, x.shape))),
    ),
    "constant": Family(
        "synthetic",
        "one random grey value everywhere",
        lambda x, r: np.broadcast_to(r.integers(0, 256, (len(x), 1, 1, 1)), x.shape).astype(
            np.uint8
        ),
    ),
    "black": Family("synthetic", "all pixels 0", lambda x, r: np.zeros_like(x)),
    "stripes": Family("synthetic", "sinusoidal gratings", _stripes),
    "rectangles": Family("synthetic", "1-3 grey rectangles on black", _rectangles),
    "horizontal flip": Family(
        "transform", "mirrored left to right", lambda x, r: x[..., ::-1].copy()
    ),
    "vertical flip": Family("transform", "upside down", lambda x, r: x[..., ::-1, :].copy()),
    "rotation 90": Family(
        "transform", "a quarter turn", lambda x, r: np.rot90(x, 1, (2, 3)).copy()
    ),
    "rotation 180": Family("transform", "a half turn", lambda x, r: np.rot90(x, 2, (2, 3)).copy()),
    "transpose": Family(
        "transform", "rows and columns swapped", lambda x, r: x.swapaxes(2, 3).copy()
    ),
    "inversion": Family("transform", "255 - x", lambda x, r: 255 - x),
    "blur": Family("transform", "binomial filter, sigma about 1 pixel", _blur),
    "low contrast": Family("transform", "x / 2", lambda x, r: _u8(x * 0.5)),
    "washed out": Family("transform", "x / 2 + 127.5", lambda x, r: _u8(x * 0.5 + 127.5)),
    "gamma": Family(
        "transform",
        "255 · (x/255)^(1/3): greys brightened",
        lambda x, r: _u8(255 * (x / 255) ** (1 / 3)),
    ),
    "threshold": Family(
        "transform",
        "255 where x ≥ 128, else 0",
        lambda x, r: np.where(x >= 128, 255, 0).astype(np.uint8),
    ),
    "black square": Family("transform", "a black square over a third of the side", _occlude(0)),
    "white square": Family("transform", "a white square over a third of the side", _occlude(255)),
    "translation": Family("transform", "moved by 4-6 pixels", _translate),
    "zoom": Family("transform", "the central 60% enlarged", _zoom),
    "shrink": Family("transform", "half size, framed in black", _shrink),
    "pixelate": Family("transform", "4×4 block means", _pixelate),
    "mixup": Family(
        "transform",
        "the mean of two normal images",
        lambda x, r: _u8((x.astype(np.float64) + x[r.permutation(len(x))]) / 2),
    ),
    "cutmix": Family("transform", "top half of one normal image, bottom half of another", _cutmix),
}


def shift(name: str, images: Images, seed: int = 0) -> Images:
    """The family `name` of shifted images made from normal `images`, reproducibly."""
    return FAMILIES[name].make(images, np.random.default_rng(seed))
