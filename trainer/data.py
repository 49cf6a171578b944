"""Image data: MNIST-style IDX files, folders of images, .npy/.npz arrays.

Everything becomes a uint8 array (N, C, H, W); scaling to [0, 1] happens per
batch on the device, so a whole dataset costs one byte per pixel in memory.
"""

from __future__ import annotations

import gzip
import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

Array = NDArray[np.uint8]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


class DataError(Exception):
    """The data cannot be read; the message says what and where."""


@dataclass(frozen=True)
class Dataset:
    train: Array  # (N, C, H, W) uint8
    test: Array | None  # the source's own test split, when it has one
    source: str
    sha256: str  # of the raw files read, so a manifest names its data exactly
    train_labels: NDArray[np.uint8] | None = None  # (N,), when the source has label files
    test_labels: NDArray[np.uint8] | None = None


def _read_raw(path: Path) -> bytes:
    """A file's bytes, gunzipped when it ends in .gz."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw: bytes = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"{path}: cannot read IDX file ({e})") from e
    return raw


def read_idx(path: Path) -> Array:
    """An IDX image file (magic 2051), gzipped or raw -> (N, 1, H, W) uint8."""
    raw = _read_raw(path)
    if len(raw) < 16:
        raise DataError(f"{path}: too short for an IDX image file")
    magic, n, rows, cols = struct.unpack(">IIII", raw[:16])
    if magic != 2051:
        raise DataError(f"{path}: not an IDX image file (magic {magic}, expected 2051)")
    if len(raw) != 16 + n * rows * cols:
        raise DataError(f"{path}: header says {n}x{rows}x{cols} pixels, file holds {len(raw) - 16}")
    return np.frombuffer(raw, np.uint8, offset=16).reshape(n, 1, rows, cols)


def read_idx_labels(path: Path) -> NDArray[np.uint8]:
    """An IDX label file (magic 2049), gzipped or raw -> (N,) uint8."""
    raw = _read_raw(path)
    if len(raw) < 8:
        raise DataError(f"{path}: too short for an IDX label file")
    magic, n = struct.unpack(">II", raw[:8])
    if magic != 2049:
        raise DataError(f"{path}: not an IDX label file (magic {magic}, expected 2049)")
    if len(raw) != 8 + n:
        raise DataError(f"{path}: header says {n} labels, file holds {len(raw) - 8}")
    return np.frombuffer(raw, np.uint8, offset=8)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (f"{stem}.gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _to_nchw(array: NDArray[np.generic], where: str) -> Array:
    if array.ndim == 3:
        array = array[:, None]
    elif array.ndim == 4 and array.shape[-1] in (1, 3) and array.shape[1] not in (1, 3):
        array = array.transpose(0, 3, 1, 2)  # NHWC -> NCHW
    if array.ndim != 4 or array.shape[1] not in (1, 3):
        raise DataError(f"{where}: expected N×H×W or N×C×H×W with C in (1, 3), got {array.shape}")
    if array.dtype == np.uint8:
        return np.ascontiguousarray(array)
    if not np.issubdtype(array.dtype, np.floating):
        raise DataError(f"{where}: expected uint8 or float pixels, got {array.dtype}")
    floats = array.astype(np.float64)
    if not np.isfinite(floats).all() or floats.min() < 0 or floats.max() > 1:
        raise DataError(f"{where}: float pixels must be finite and in [0, 1]")
    return np.ascontiguousarray(np.round(floats * 255).astype(np.uint8))


def _read_array(path: Path) -> Array:
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read array ({e})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = [k for k in ("x", "images", "x_train") if k in loaded] or list(loaded.keys())
        if not keys:
            raise DataError(f"{path}: empty .npz")
        loaded = loaded[keys[0]]
    return _to_nchw(loaded, str(path))


def _read_folder(folder: Path, channels: int, size: tuple[int, int] | None) -> Array:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"{folder}: no IDX files, arrays or images ({', '.join(IMAGE_SUFFIXES)})")
    mode = "L" if channels == 1 else "RGB"
    images = []
    for p in files:
        try:
            with Image.open(p) as opened:
                image = opened.convert(mode)
            if size is not None and image.size != (size[1], size[0]):
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            images.append(np.asarray(image, np.uint8))
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{p}: not a readable image ({e})") from e
    shapes = {a.shape for a in images}
    if len(shapes) > 1:
        raise DataError(f"{folder}: images differ in size {sorted(shapes)[:3]}; pass --image-size")
    stacked = np.stack(images)
    return _to_nchw(stacked if channels == 1 else stacked.transpose(0, 3, 1, 2), str(folder))


def _sha256(paths: list[Path]) -> str:
    digest = hashlib.sha256()
    for p in sorted(paths):
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def load(source: str | Path, channels: int = 1, size: tuple[int, int] | None = None) -> Dataset:
    """Read a dataset from an IDX folder or file, an image folder, or a .npy/.npz file."""
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_dir():
        train = _find_idx(path, "train-images-idx3-ubyte")
        if train is not None:
            test = _find_idx(path, "t10k-images-idx3-ubyte")
            used = [train] + ([test] if test else [])
            # Labels are optional: they only serve class filters (one-class experiments).
            train_labels = _find_idx(path, "train-labels-idx1-ubyte")
            test_labels = _find_idx(path, "t10k-labels-idx1-ubyte")
            return Dataset(
                read_idx(train),
                read_idx(test) if test else None,
                str(path),
                _sha256(used),
                read_idx_labels(train_labels) if train_labels else None,
                read_idx_labels(test_labels) if test_labels and test else None,
            )
        images = _read_folder(path, channels, size)
        files = [p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES]
        return Dataset(images, None, str(path), _sha256(files))
    if path.suffix in (".npy", ".npz"):
        return Dataset(_read_array(path), None, str(path), _sha256([path]))
    if "idx3" in path.name:
        return Dataset(read_idx(path), None, str(path), _sha256([path]))
    raise DataError(f"{path}: expected an IDX folder or file, an image folder, or .npy/.npz")


def select(dataset: Dataset, classes: list[int]) -> Dataset:
    """Only the images whose label is in `classes` (one-class training). The test split
    is filtered too; without test labels it is dropped, so a test fraction is held out."""
    labels = dataset.train_labels
    if labels is None or len(labels) != len(dataset.train):
        raise DataError(f"{dataset.source}: no train labels (train-labels-idx1-ubyte) to select by")
    keep = np.isin(labels, classes)
    if not keep.any():
        raise DataError(f"{dataset.source}: no training images of classes {classes}")
    test, test_labels = None, None
    if dataset.test is not None and dataset.test_labels is not None:
        if len(dataset.test_labels) != len(dataset.test):
            raise DataError(f"{dataset.source}: test labels and images differ in number")
        kept = np.isin(dataset.test_labels, classes)
        test, test_labels = dataset.test[kept], dataset.test_labels[kept]
    return Dataset(
        dataset.train[keep], test, dataset.source, dataset.sha256, labels[keep], test_labels
    )


def split(images: Array, fraction_or_count: float, seed: int) -> tuple[Array, Array]:
    """Hold out a seeded random subset: (rest, held_out)."""
    n = len(images)
    held = int(fraction_or_count if fraction_or_count >= 1 else round(n * fraction_or_count))
    if not 0 < held < n:
        raise DataError(f"cannot hold out {held} of {n} images")
    order = np.random.default_rng(seed).permutation(n)
    return images[order[held:]], images[order[:held]]


def splits(
    dataset: Dataset, validation: float, test_fraction: float, seed: int
) -> tuple[Array, Array, Array]:
    """(train, validation, test): the source's own test split when it has one,
    else a seeded held-out fraction; validation is always held out from train."""
    rest, test = (
        (dataset.train, dataset.test)
        if dataset.test is not None
        else split(dataset.train, test_fraction, seed)
    )
    # A different seed for the validation draw: it must not mirror the test draw.
    train, held_out = split(rest, validation, seed + 1)
    return train, held_out, test


def as_trained(source: str | Path, config: dict[str, Any]) -> tuple[Array, Array, Array]:
    """(train, validation, test) exactly as the manifest's training config split them."""
    size = config.get("image_size")
    dataset = load(source, config["channels"], (size[0], size[1]) if size else None)
    if config.get("classes") is not None:  # absent from manifests that predate class filters
        dataset = select(dataset, config["classes"])
    return splits(dataset, config["validation"], config["test_fraction"], config["seed"])
