"""The one typed training config; saved whole into the manifest so a model
names exactly how it was made."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from trainer.likelihood import Likelihood


@dataclass
class TrainConfig:
    data: str
    out: str  # model store folder of this model's versions, e.g. model_store/mnist
    version: int | None = None  # default: the next free integer
    architecture: str = "mlp"  # mlp | conv
    hidden: list[int] = field(default_factory=lambda: [512, 256])
    latent_dim: int = 50
    likelihood: Likelihood = "bernoulli"
    binarize: bool = True  # dynamic binarisation (Bernoulli only): the MNIST LL protocol
    channels: int = 1  # for image folders: 1 grayscale, 3 RGB
    image_size: list[int] | None = None  # [H, W] for image folders
    classes: list[int] | None = None  # train on these labels only (one-class experiments)
    epochs: int = 50
    max_steps: int | None = None  # stop early after this many optimiser steps (tests, smoke runs)
    batch_size: int = 128
    lr: float = 1e-3
    lr_min: float = 1e-4  # cosine decay from lr to lr_min over the epochs
    warmup_epochs: float = 0.0  # KL weight rises linearly from 0 to 1 over these epochs
    objective: str = "elbo"  # elbo | iwae
    iw_k: int = 5  # samples per example for the iwae objective
    validation: float = 5000  # held out from training: a count, or a fraction if < 1
    test_fraction: float = 0.1  # held out for testing when the source has no test split
    seed: int = 0
    eval_k: int = 5000  # importance samples for the reported log-likelihood
    eval_limit: int | None = None  # evaluate on the first N test images only (smoke runs)
    device: str = "auto"  # auto | cpu | cuda
    threads: int | None = None  # torch intra-op threads (default: torch's choice)
    checkpoint_dir: str | None = None  # default: runs/<name>
    resume: str | None = None  # a checkpoint to continue from
    report: bool = True  # write PNGs of reconstructions, samples and curves

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
