"""Image data: MNIST-style IDX files, folders of images, .npy/.npz arrays.

Every source yields uint8 images (C, H, W); scaling to [0, 1] happens per batch
on the device. IDX files and arrays are small enough to hold in memory (one
byte per pixel); an image folder is a `Folder`, which decodes a file only when
an image is asked for, so a folder of any size can be streamed
(trainer/loader.py) or, when it fits, decoded once into an array.

Fingerprints (the manifest's `training.data.sha256`) never read a byte twice:
IDX files and arrays are hashed from the bytes read to load them; a folder is
fingerprinted by its listing (`sha256_of: "listing"`): the sorted relative
paths, sizes and modification times of its image files. That detects any file
added, removed, resized or rewritten (a write updates the mtime), not an edit
that restores both size and mtime.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from PIL import Image, UnidentifiedImageError

from vae_contract import images

Array = NDArray[np.uint8]
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
# An aspect ratio may change this much (relative) before a resize counts as distortion.
ASPECT_TOLERANCE = 0.02


class DataError(Exception):
    """The data cannot be read or does not fit the settings; the message says what and where."""


class Folder:
    """Image files under one root, decoded on demand to uint8 (C, H, W).

    Holds only relative paths, so it is cheap to pickle into DataLoader workers.
    """

    def __init__(
        self,
        root: Path,
        files: Sequence[str],
        channels: int,
        size: tuple[int, int],
        center_crop: bool = False,
    ) -> None:
        self.root, self.files = root, list(files)
        self.channels, self.size, self.center_crop = channels, size, center_crop

    def __len__(self) -> int:
        return len(self.files)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.files), self.channels, *self.size)

    def __getitem__(self, i: int) -> Array:
        """One image by the service's decode rule (vae_contract.images), stored as
        round(255·x): the pixels /encode and /elbo make of the same file, to 8 bits."""
        path = self.root / self.files[i]
        fit: images.Fit = "crop" if self.center_crop else "stretch"
        try:
            x = images.read(path, self.channels, self.size, fit)
        except images.ImageError as e:
            raise DataError(f"{path}: {e}") from e
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{path}: not a readable image ({e})") from e
        return images.to_uint8(x)  # a fresh array: torch shares it without a warning

    def subset(self, indices: NDArray[np.int64]) -> Folder:
        return Folder(
            self.root, [self.files[i] for i in indices], self.channels, self.size, self.center_crop
        )


Images = Array | Folder  # (N, C, H, W) uint8, in memory or decoded on demand


@dataclass(frozen=True)
class Dataset:
    train: Images
    test: Images | None  # the source's own test split, when it has one
    source: str
    sha256: str  # the fingerprint: see the module docstring
    sha256_of: Literal["bytes", "listing"] = "bytes"
    train_labels: NDArray[np.uint8] | None = None  # (N,), when the source has label files
    test_labels: NDArray[np.uint8] | None = None
    # What the files hold before conversion: channels (3 if any is colour) and sizes.
    native_channels: int = 1
    native_sizes: frozenset[tuple[int, int]] = field(default_factory=frozenset)


def take(images: Images, indices: NDArray[np.int64] | range) -> Array:
    """The images at `indices` as one uint8 array (decoded, for a folder)."""
    if isinstance(images, Folder):
        out = np.empty((len(indices), *images.shape[1:]), np.uint8)
        for row, i in enumerate(indices):
            out[row] = images[int(i)]
        return out
    return np.ascontiguousarray(images[np.asarray(indices)])


def array(images: Images) -> Array:
    """All the images as one uint8 array (N, C, H, W)."""
    return images if isinstance(images, np.ndarray) else take(images, range(len(images)))


def subset(images: Images, indices: NDArray[np.int64]) -> Images:
    return images.subset(indices) if isinstance(images, Folder) else images[indices]


def _read_hashed(paths: list[Path], digest: Any) -> dict[Path, bytes]:
    """Each file's bytes (gunzipped if .gz), hashed raw in sorted order as they are read."""
    out = {}
    for path in sorted(paths):
        try:
            raw = path.read_bytes()
            digest.update(raw)
            out[path] = gzip.decompress(raw) if path.suffix == ".gz" else raw
        except (OSError, EOFError, gzip.BadGzipFile) as e:
            raise DataError(f"{path}: cannot read ({e})") from e
    return out


def read_idx(path: Path, raw: bytes | None = None) -> Array:
    """An IDX image file (magic 2051), gzipped or raw -> (N, 1, H, W) uint8."""
    raw = raw if raw is not None else _read_hashed([path], hashlib.sha256())[path]
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
    raw = _read_hashed([path], hashlib.sha256())[path]
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


def _read_array(path: Path, raw: bytes) -> Array:
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read array ({e})") from e
    if isinstance(loaded, np.lib.npyio.NpzFile):
        keys = [k for k in ("x", "images", "x_train") if k in loaded] or list(loaded.keys())
        if not keys:
            raise DataError(f"{path}: empty .npz")
        loaded = loaded[keys[0]]
    return _to_nchw(loaded, str(path))


@dataclass(frozen=True)
class Listing:
    """An image folder's files with what their headers say (no pixels decoded)."""

    root: Path
    files: list[str]  # relative, sorted
    sizes: frozenset[tuple[int, int]]  # (H, W) of the images
    colour: bool  # any image in a colour mode (a palette counts when it is not grey)
    sha256: str  # of the sorted (path, bytes, mtime) lines


def list_folder(root: Path) -> Listing:
    """Walk the folder once: stat each image file and read its header only."""
    entries: list[tuple[str, int, int]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                stat = os.stat(os.path.join(dirpath, name))
                rel = os.path.relpath(os.path.join(dirpath, name), root)
                entries.append((rel, stat.st_size, stat.st_mtime_ns))
    if not entries:
        raise DataError(f"{root}: no IDX files, arrays or images ({', '.join(IMAGE_SUFFIXES)})")
    entries.sort()
    digest = hashlib.sha256()
    sizes: set[tuple[int, int]] = set()
    colour = False
    for rel, nbytes, mtime in entries:
        digest.update(f"{rel}\0{nbytes}\0{mtime}\n".encode())
        try:
            with Image.open(root / rel) as image:  # lazy: parses the header only
                sizes.add(images.upright_size(image))  # as the decode rule turns it
                colour = colour or _is_colour(image)
        except (UnidentifiedImageError, OSError) as e:
            raise DataError(f"{root / rel}: not a readable image ({e})") from e
    return Listing(root, [e[0] for e in entries], frozenset(sizes), colour, digest.hexdigest())


def _is_colour(image: Image.Image) -> bool:
    if image.mode in GREY_MODES:
        return False
    if image.mode in ("P", "PA"):
        palette = image.getpalette() or []
        return any(len({*palette[i : i + 3]}) > 1 for i in range(0, len(palette) - 2, 3))
    return True


def _folder(
    listing: Listing, channels: int | None, size: tuple[int, int] | None, center_crop: bool
) -> Folder:
    if size is None:
        if len(listing.sizes) > 1:
            shown = ", ".join(f"{h}×{w}" for h, w in sorted(listing.sizes)[:3])
            raise DataError(
                f"{listing.root}: images differ in size ({shown}, …); pass --image-size H W "
                "(with --center-crop where their aspect ratios differ)"
            )
        size = next(iter(listing.sizes))
    elif not center_crop:
        wanted = size[1] / size[0]
        for h, w in sorted(listing.sizes):
            if abs((w / h) / wanted - 1) > ASPECT_TOLERANCE:
                raise DataError(
                    f"--image-size {size[0]} {size[1]} would distort {listing.root}'s {h}×{w} "
                    f"images (width/height {w / h:.2f} → {wanted:.2f}); pass a size with their "
                    "aspect ratio, or --center-crop to crop them to it first"
                )
    return Folder(
        listing.root, listing.files, channels or (3 if listing.colour else 1), size, center_crop
    )


def load(
    source: str | Path,
    channels: int | None = None,
    size: tuple[int, int] | None = None,
    center_crop: bool = False,
) -> Dataset:
    """Read a dataset from an IDX folder or file, an image folder, or a .npy/.npz file.

    `channels` and `size` convert image folders (default: what the files hold, when
    they agree); arrays and IDX files must already have them.
    """
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    digest = hashlib.sha256()
    if path.is_dir():
        train = _find_idx(path, "train-images-idx3-ubyte")
        if train is None:
            listing = list_folder(path)
            return Dataset(
                _folder(listing, channels, size, center_crop),
                None,
                str(path),
                listing.sha256,
                "listing",
                native_channels=3 if listing.colour else 1,
                native_sizes=listing.sizes,
            )
        test = _find_idx(path, "t10k-images-idx3-ubyte")
        raw = _read_hashed([train] + ([test] if test else []), digest)
        # Labels are optional: they only serve class filters (one-class experiments).
        train_labels = _find_idx(path, "train-labels-idx1-ubyte")
        test_labels = _find_idx(path, "t10k-labels-idx1-ubyte")
        dataset = Dataset(
            read_idx(train, raw[train]),
            read_idx(test, raw[test]) if test else None,
            str(path),
            digest.hexdigest(),
            train_labels=read_idx_labels(train_labels) if train_labels else None,
            test_labels=read_idx_labels(test_labels) if test_labels and test else None,
        )
    elif path.suffix in (".npy", ".npz"):
        raw = _read_hashed([path], digest)
        dataset = Dataset(_read_array(path, raw[path]), None, str(path), digest.hexdigest())
    elif "idx3" in path.name:
        raw = _read_hashed([path], digest)
        dataset = Dataset(read_idx(path, raw[path]), None, str(path), digest.hexdigest())
    else:
        raise DataError(f"{path}: expected an IDX folder or file, an image folder, or .npy/.npz")
    assert isinstance(dataset.train, np.ndarray)
    _, c, h, w = dataset.train.shape
    if channels is not None and channels != c:
        raise DataError(f"{path} holds {c}-channel images; --channels {channels} is for folders")
    if size is not None and tuple(size) != (h, w):
        raise DataError(f"{path} holds {h}×{w} images; --image-size is for image folders")
    return replace(dataset, native_channels=c, native_sizes=frozenset({(h, w)}))


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
        test, test_labels = subset(dataset.test, np.flatnonzero(kept)), dataset.test_labels[kept]
    train = subset(dataset.train, np.flatnonzero(keep))
    return replace(
        dataset, train=train, test=test, train_labels=labels[keep], test_labels=test_labels
    )


def held_out_count(n: int, fraction_or_count: float, cap: int | None = None) -> int:
    """How many of n images a `--validation`-style setting holds out: a count, or a
    fraction (if < 1) of n, at most `cap`."""
    if fraction_or_count >= 1:
        return int(fraction_or_count)
    held = round(n * fraction_or_count)
    return min(held, cap) if cap is not None else held


def split(
    images: Images, fraction_or_count: float, seed: int, cap: int | None = None, flag: str = ""
) -> tuple[Images, Images]:
    """Hold out a seeded random subset: (rest, held_out)."""
    n = len(images)
    held = held_out_count(n, fraction_or_count, cap)
    if not 0 < held < n:
        named = f" ({flag} {fraction_or_count:g})" if flag else ""
        raise DataError(
            f"cannot hold out {held} of {n} images{named}; "
            f"pass a fraction below 1 or a count below {n}"
        )
    order = np.random.default_rng(seed).permutation(n)
    return subset(images, order[held:]), subset(images, order[:held])


def splits(
    dataset: Dataset,
    validation: float,
    test_fraction: float,
    seed: int,
    cap: int | None = None,
) -> tuple[Images, Images, Images]:
    """(train, validation, test): the source's own test split when it has one,
    else a seeded held-out fraction; validation is always held out from train.
    Fractions hold out at most `cap` images."""
    rest, test = (
        (dataset.train, dataset.test)
        if dataset.test is not None
        else split(dataset.train, test_fraction, seed, cap, "--test-fraction")
    )
    # A different seed for the validation draw: it must not mirror the test draw.
    train, held_out = split(rest, validation, seed + 1, cap, "--validation")
    return train, held_out, test


def as_trained(source: str | Path, config: dict[str, Any]) -> tuple[Images, Array, Array]:
    """(train, validation, test) exactly as the manifest's training config split them;
    the held-out splits as arrays (a cap keeps them small), train as it comes."""
    size = config.get("image_size")
    dataset = load(
        source,
        config.get("channels"),
        (size[0], size[1]) if size else None,
        config.get("center_crop", False),
    )
    if config.get("classes") is not None:  # absent from manifests that predate class filters
        dataset = select(dataset, config["classes"])
    train, validation, test = splits(
        dataset,
        config["validation"],
        config["test_fraction"],
        config["seed"],
        config.get("held_out_max"),  # absent from manifests that predate the cap: none
    )
    return train, array(validation), array(test)
