"""Data loading: IDX, image folders, arrays, splits, and errors that say what is wrong."""

from __future__ import annotations

import gzip
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from trainer import data
from trainer.distributed import Rank
from trainer.loader import Batches

MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"


def test_reads_real_mnist_idx() -> None:
    dataset = data.load(MNIST)
    assert dataset.train.shape == (60000, 1, 28, 28)
    assert dataset.test is not None and dataset.test.shape == (10000, 1, 28, 28)
    assert dataset.train.dtype == np.uint8 and dataset.train.max() == 255
    assert len(dataset.sha256) == 64


def test_reads_raw_idx_and_rejects_a_label_file(tmp_path: Path) -> None:
    raw = gzip.decompress((MNIST / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(raw)
    assert data.read_idx(tmp_path / "t10k-images-idx3-ubyte").shape == (10000, 1, 28, 28)
    with pytest.raises(data.DataError, match="magic 2049, expected 2051"):
        data.read_idx(MNIST / "t10k-labels-idx1-ubyte.gz")
    (tmp_path / "cut-idx3-ubyte").write_bytes(raw[:1000])
    with pytest.raises(data.DataError, match="header says 10000x28x28"):
        data.read_idx(tmp_path / "cut-idx3-ubyte")


def test_reads_an_image_folder_with_class_subfolders_as_rgb_resized(tmp_path: Path) -> None:
    digits = data.read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:6, 0]
    for i, digit in enumerate(digits):
        folder = tmp_path / f"class{i % 2}"
        folder.mkdir(exist_ok=True)
        Image.fromarray(digit).save(folder / f"{i}.png")
    dataset = data.load(tmp_path, channels=3, size=(14, 14))
    assert dataset.train.shape == (6, 3, 14, 14)
    assert dataset.test is None and dataset.sha256_of == "listing"
    assert data.array(dataset.train).shape == (6, 3, 14, 14)
    gray = data.load(tmp_path)  # channels and size from the files
    assert gray.train.shape == (6, 1, 28, 28)
    assert {tuple(a.ravel()) for a in data.array(gray.train)} == {tuple(d.ravel()) for d in digits}
    with pytest.raises(data.DataError, match=r"--image-size 16 20 would distort .* 28×28 images"):
        data.load(tmp_path, size=(16, 20))
    cropped = data.load(tmp_path, size=(16, 20), center_crop=True)  # the middle 22×28, resized
    assert data.array(cropped.train).shape == (6, 1, 16, 20)


def test_reads_npy_and_npz_in_uint8_or_float(tmp_path: Path) -> None:
    pixels = np.random.default_rng(0).integers(0, 256, (5, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "a.npy", pixels.transpose(0, 2, 3, 1))  # NHWC is accepted too
    np.savez(tmp_path / "b.npz", x=pixels.astype(np.float32) / 255)
    assert np.array_equal(data.load(tmp_path / "a.npy").train, pixels)
    assert np.array_equal(data.load(tmp_path / "b.npz").train, pixels)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (np.full((2, 8, 8), 1.5, np.float32), "in \\[0, 1\\]"),
        (np.zeros((2, 5, 8, 8), np.uint8), "C in \\(1, 3\\)"),
        (np.zeros((2, 8, 8), np.int64), "uint8 or float"),
    ],
)
def test_bad_arrays_are_refused_with_a_reason(
    tmp_path: Path, content: np.ndarray, message: str
) -> None:
    np.save(tmp_path / "bad.npy", content)
    with pytest.raises(data.DataError, match=message):
        data.load(tmp_path / "bad.npy")


def test_unreadable_sources_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(data.DataError, match="no such file"):
        data.load(tmp_path / "missing")
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(data.DataError, match=r"broken\.png: not a readable image"):
        data.load(tmp_path / "img")


def test_splits_are_disjoint_seeded_and_keep_the_source_test_set() -> None:
    images = np.arange(100, dtype=np.uint8).reshape(100, 1, 1, 1)
    dataset = data.Dataset(images, None, "mem", "0" * 64)
    train, validation, test = data.splits(dataset, 0.2, 0.1, seed=3)
    assert (len(train), len(validation), len(test)) == (72, 18, 10)
    together = np.concatenate([train, validation, test]).ravel()
    assert sorted(together.tolist()) == list(range(100))
    again = data.splits(dataset, 0.2, 0.1, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, validation, test), strict=True))
    with_test = data.Dataset(images, images[:7], "mem", "0" * 64)
    assert len(data.splits(with_test, 10, 0.1, seed=3)[2]) == 7


def test_fingerprints_hash_array_bytes_and_folder_listings(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros((4, 8, 8), np.uint8))
    expected = hashlib.sha256((tmp_path / "a.npy").read_bytes()).hexdigest()
    assert data.load(tmp_path / "a.npy").sha256 == expected
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((8, 8), 40 * i, np.uint8)).save(folder / f"{i}.png")
    first = data.load(folder).sha256
    assert data.load(folder).sha256 == first  # the same listing, the same fingerprint
    stat = os.stat(folder / "1.png")
    os.utime(folder / "1.png", ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))  # rewritten
    touched = data.load(folder).sha256
    assert touched != first
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "3.png")  # one more file
    assert data.load(folder).sha256 not in (first, touched)


def _digit_folder(folder: Path, n: int) -> data.Folder:
    folder.mkdir()
    for i, digit in enumerate(data.read_idx(MNIST / "t10k-images-idx3-ubyte.gz")[:n, 0]):
        Image.fromarray(digit).save(folder / f"{i:03d}.png")
    images = data.load(folder).train
    assert isinstance(images, data.Folder)
    return images


def test_streamed_batches_equal_the_in_memory_ones_and_ranks_share_one_order(
    tmp_path: Path,
) -> None:
    images = _digit_folder(tmp_path / "digits", 40)
    alone = Rank(0, 1, 0, 1, torch.device("cpu"))
    streamed = Batches(images, 8, alone, seed=0, stream=True, workers=2)
    in_memory = Batches(images, 8, alone, seed=0, stream=False, workers=0)
    assert streamed.on_device is None and in_memory.loader is None  # nothing decoded ahead
    epochs = []
    for epoch in (0, 1):
        a, b = list(streamed.epoch(epoch)), list(in_memory.epoch(epoch))
        assert len(a) == len(b) == len(streamed) == 5
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        epochs.append(torch.cat(a))
    assert not torch.equal(epochs[0], epochs[1])  # reshuffled each epoch
    # Two ranks with half the batch each see the same global batches, split between them.
    ranks = [Rank(r, 2, r, 2, torch.device("cpu")) for r in (0, 1)]
    shards = [list(Batches(images, 8, r, seed=0, stream=False, workers=0).epoch(0)) for r in ranks]
    for whole, half0, half1 in zip(epochs[0].split(8), *shards, strict=True):
        together = torch.cat([half0, half1])
        assert sorted(map(bytes, together.numpy())) == sorted(map(bytes, whole.numpy()))
