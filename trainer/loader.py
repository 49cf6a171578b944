"""Training batches: uint8 images (B, C, H, W) on the device, each rank its shard.

Two paths, one order. Both take their indices from a DistributedSampler (one
process of one when not under torchrun), so an epoch's global order depends on
the seed and the epoch only and a DDP run sees the same global batches as a
single process with the same --batch-size.

- In memory (IDX files, arrays, folders that fit): the whole uint8 set sits on
  the device and a batch is one gather. The fast path.
- Streaming (large image folders): a DataLoader whose worker processes decode
  the files of each batch as it is needed, a few batches ahead. Memory is the
  file list plus workers × prefetch × batch images, whatever the folder's size.

Scaling, dynamic binarisation and augmentation happen per batch on the device
(`to_x`), the same for both paths: a fresh draw every time a batch is used.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from trainer.data import Array, Folder, Images
from trainer.distributed import Rank

PREFETCH = 2  # batches each worker decodes ahead


class _Decoded(TorchDataset[torch.Tensor]):
    """A Folder as a torch Dataset; each worker process decodes its own files."""

    def __init__(self, folder: Folder) -> None:
        self.folder = folder

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.from_numpy(self.folder[i])


class _Indices(TorchDataset[int]):
    """0 … n-1: what the sampler shuffles and shards (it only needs the length)."""

    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def default_workers(rank: Rank) -> int:
    """The machine's CPUs shared among its ranks, at most 8 per rank."""
    return max(1, min(8, (os.cpu_count() or 1) // rank.local_world))


def decoded_bytes(images: Images) -> int:
    return math.prod(images.shape)


def materialize(images: Images, workers: int) -> Array:
    """The images as one uint8 array; a folder is decoded by `workers` processes
    straight into the array (no list of per-file arrays, no stacked copy)."""
    if not isinstance(images, Folder):
        return images
    out = np.empty(images.shape, np.uint8)
    loader = DataLoader(_Decoded(images), batch_size=256, num_workers=workers)
    start = 0
    for batch in loader:
        out[start : start + len(batch)] = batch.numpy()
        start += len(batch)
    return out


class Batches:
    """This rank's batches of one epoch: `for batch in batches.epoch(e)`."""

    def __init__(
        self,
        images: Images,
        global_batch: int,
        rank: Rank,
        seed: int,
        stream: bool,
        workers: int,
    ) -> None:
        if global_batch % rank.world:
            raise ValueError(
                f"--batch-size {global_batch} must divide among {rank.world} processes"
            )
        self.batch = global_batch // rank.world
        self.device = rank.device
        indices: TorchDataset[int] = _Indices(len(images))
        self.sampler: DistributedSampler[int] = DistributedSampler(
            indices, num_replicas=rank.world, rank=rank.rank, shuffle=True, seed=seed
        )
        self.loader: DataLoader[torch.Tensor] | None = None
        self.on_device: torch.Tensor | None = None
        if stream and isinstance(images, Folder):
            self.loader = DataLoader(
                _Decoded(images),
                batch_size=self.batch,
                sampler=self.sampler,
                num_workers=workers,
                persistent_workers=workers > 0,
                prefetch_factor=PREFETCH if workers > 0 else None,
                pin_memory=self.device.type == "cuda",
            )
        else:
            self.on_device = torch.from_numpy(materialize(images, workers)).to(self.device)

    def __len__(self) -> int:
        """Batches per epoch, the same on every rank (the sampler pads the last)."""
        return math.ceil(len(self.sampler) / self.batch)

    def epoch(self, epoch: int) -> Iterator[torch.Tensor]:
        self.sampler.set_epoch(epoch)  # the shuffle is a function of (seed, epoch)
        if self.loader is not None:
            for batch in self.loader:
                yield batch.to(self.device, non_blocking=True)
            return
        assert self.on_device is not None
        order = torch.tensor(list(self.sampler), device=self.device)
        yield from (self.on_device[idx] for idx in torch.split(order, self.batch))


def to_x(batch: torch.Tensor, binarize: bool, flip: bool) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float in [0, 1], binarised and mirrored afresh on each call."""
    x = batch.float() / 255
    if binarize:
        x = torch.bernoulli(x)  # dynamic binarisation
    if flip:
        mirrored = torch.rand(len(x), 1, 1, 1, device=x.device) < 0.5
        x = torch.where(mirrored, x.flip(-1), x)
    return x
