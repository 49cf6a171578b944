"""PNGs a person looks at next to the manifest: reconstructions, samples, curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image


def grid(images: NDArray[np.floating[Any]], columns: int = 8, pad: int = 2) -> Image.Image:
    """(N, C, H, W) in [0, 1] -> one image, N tiles in rows of `columns`."""
    n, c, h, w = images.shape
    rows = -(-n // columns)
    canvas = np.ones((c, rows * (h + pad) + pad, columns * (w + pad) + pad), np.float32)
    for i, image in enumerate(images):
        r, col = divmod(i, columns)
        top, left = pad + r * (h + pad), pad + col * (w + pad)
        canvas[:, top : top + h, left : left + w] = image
    pixels = (np.clip(canvas, 0, 1) * 255).round().astype(np.uint8)
    return Image.fromarray(pixels[0] if c == 1 else pixels.transpose(1, 2, 0))


def write(
    folder: Path,
    originals: NDArray[np.floating[Any]],
    reconstructions: NDArray[np.floating[Any]],
    samples: NDArray[np.floating[Any]],
    history: list[dict[str, Any]],
) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    # Originals on odd rows, their reconstructions right below.
    pairs = np.concatenate(
        [
            np.stack([originals[i : i + 8], reconstructions[i : i + 8]])
            for i in range(0, len(originals), 8)
        ]
    ).reshape(-1, *originals.shape[1:])
    _save(grid(pairs), folder / "reconstructions.png")
    _save(grid(samples), folder / "samples.png")
    _curves(folder / "curves.png", history)


def _save(image: Image.Image, path: Path, scale: int = 3) -> None:
    """Upscaled without smoothing, so 28×28 digits are legible in a browser."""
    image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST).save(path)


def _curves(path: Path, history: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [h["train_elbo"] for h in history], label="train ELBO (objective)")
    ax.plot(epochs, [h["validation_elbo"] for h in history], label="validation ELBO")
    ax.set_xlabel("epoch")
    ax.set_ylabel("nats per example")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
