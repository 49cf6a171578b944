"""What the service draws: pixel means as PNGs (one image, or a grid for several),
and the reconstruction-error map of /elbo/map (docs/manifest.md)."""

from __future__ import annotations

import io
import math

import numpy as np
from PIL import Image

# The heat map's colour scale: 0 nats black, through red and yellow, white at and
# above this many nats of -log p(x_i|z) (a pixel value the model gives p ≈ 0.7%).
HEAT_NATS = 5.0
# The deviation map's: 0 black (as the model expects); more surprising through red and
# yellow to white at +DEVIATION_SD standard deviations; more predictable than the
# model's own samples through blue and cyan to white at -DEVIATION_SD.
DEVIATION_SD = 4.0


def grid(images: np.ndarray, padding: int = 2) -> np.ndarray:
    """(N, C, H, W) -> one (C, H', W') tile of ceil(sqrt(N)) columns, padded with 0."""
    n, c, h, w = images.shape
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    out = np.zeros(
        (c, rows * h + (rows + 1) * padding, cols * w + (cols + 1) * padding), images.dtype
    )
    for i in range(n):
        top = padding + (i // cols) * (h + padding)
        left = padding + (i % cols) * (w + padding)
        out[:, top : top + h, left : left + w] = images[i]
    return out


def encode_png(pixels: np.ndarray) -> bytes:
    """(N, C, H, W) floats in [0, 1] -> PNG bytes: the image itself for N = 1, else a grid."""
    tile = pixels[0] if len(pixels) == 1 else grid(pixels)
    as_bytes = np.clip(np.rint(tile * 255.0), 0, 255).astype(np.uint8)
    channels = as_bytes.shape[0]
    image = Image.fromarray(as_bytes[0] if channels == 1 else as_bytes.transpose(1, 2, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def _ramp(t: np.ndarray) -> np.ndarray:
    """(H, W) in [0, 1] -> (3, H, W), the 'hot' ramp: black, red, yellow, white."""
    return np.stack([np.clip(3 * t - i, 0.0, 1.0) for i in range(3)])


def heat(nats: np.ndarray) -> np.ndarray:
    """(N, H, W) nats -> (N, 3, H, W) in [0, 1]: the hot ramp up to HEAT_NATS."""
    return np.stack([_ramp(np.clip(m / HEAT_NATS, 0.0, 1.0)) for m in nats])


def diverging(deviation: np.ndarray) -> np.ndarray:
    """(N, H, W) standard deviations -> (N, 3, H, W): the hot ramp above 0, its mirror
    in blue (RGB reversed) below, both saturating at ±DEVIATION_SD."""
    t = np.clip(deviation / DEVIATION_SD, -1.0, 1.0)
    up = np.stack([_ramp(np.maximum(m, 0.0)) for m in t])
    down = np.stack([_ramp(np.maximum(-m, 0.0))[::-1] for m in t])
    return np.where((t >= 0)[:, None], up, down)


def _rgb(images: np.ndarray) -> np.ndarray:
    """(N, C, H, W) -> (N, 3, H, W): RGB as is, anything else as its grey mean."""
    if images.shape[1] == 3:
        return images
    return np.repeat(images.mean(axis=1, keepdims=True), 3, axis=1)


def map_png(x: np.ndarray, means: np.ndarray, panel: np.ndarray, zoom: int) -> bytes:
    """One row per image: input | reconstruction | map, as an RGB PNG of N·H·zoom ×
    3·W·zoom pixels. x, means (N, C, H, W) in [0, 1]; panel (N, 3, H, W) in [0, 1],
    from `heat` or `diverging`."""
    n, _, h, w = x.shape
    rows = np.concatenate([_rgb(x), _rgb(means), panel], axis=3)
    tile = rows.transpose(1, 0, 2, 3).reshape(3, n * h, 3 * w)  # rows stacked vertically
    tile = tile.repeat(zoom, axis=1).repeat(zoom, axis=2)
    image = Image.fromarray(np.rint(tile * 255.0).astype(np.uint8).transpose(1, 2, 0))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
