"""Settle what the data decides: channels, image size, likelihood, binarisation,
widths; refuse settings that contradict the data, and warn about doubtful ones.

The likelihood follows the pixels. Near-binary grey images (MNIST: 91% of the
pixels within 10% of black or white) get a Bernoulli likelihood with dynamic
binarisation, the protocol of the MNIST log-likelihood literature. Grey values
(Fashion-MNIST: 61%) and colour get the continuous Bernoulli, a proper density
on [0, 1]: a Bernoulli likelihood on grey values is not one, so its "ELBO" does
not bound a log-likelihood.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from trainer.config import HIDDEN, TrainConfig
from trainer.data import Dataset, Images, take

NEAR_BINARY = 0.85  # the share of pixels within 10% of 0 or 255 that makes a set binary
SAMPLE = 256  # images looked at to decide


class ConfigError(ValueError):
    """Settings that contradict the data; the message names the flag."""


def near_binary_share(images: Images) -> float:
    """The share of pixels within 10% of black or white, over up to SAMPLE images
    spread through the set."""
    n = len(images)
    pixels = take(images, np.unique(np.linspace(0, n - 1, min(n, SAMPLE)).astype(np.int64)))
    return float(np.mean((pixels <= 25) | (pixels >= 230)))


def settle(c: TrainConfig, dataset: Dataset, warn: Callable[[str], None]) -> TrainConfig:
    """`c` with every data-decided default filled in (the manifest stores these)."""
    _, channels, height, width = dataset.train.shape
    native = dataset.native_channels
    if c.channels is not None and c.channels != native:
        if c.channels == 1:
            warn(f"--channels 1: {dataset.source} holds colour images; training on their grey")
        else:
            warn(f"--channels 3: {dataset.source} holds grey images; each is repeated 3 times")
    binary_share = near_binary_share(dataset.train)
    binary = channels == 1 and binary_share >= NEAR_BINARY
    likelihood = c.likelihood or ("bernoulli" if binary or c.binarize else "continuous_bernoulli")
    binarize = c.binarize
    if binarize and likelihood != "bernoulli":
        raise ConfigError("--binarize is for --likelihood bernoulli only")
    if binarize and not binary:
        what = "colour" if channels == 3 else "grey"
        message = (
            f"--binarize would turn {dataset.source}'s {what} images black and white (only "
            f"{binary_share:.0%} of their pixels are near black or white)"
        )
        if channels == 3:
            raise ConfigError(message + "; drop it: colour gets continuous_bernoulli")
        warn(message)
    if binarize is None:
        binarize = likelihood == "bernoulli" and binary
    if likelihood == "bernoulli" and not binarize and not binary:
        warn(
            "a bernoulli likelihood on grey values is not a density of them: its ELBO is no "
            "log-likelihood (continuous_bernoulli is)"
        )
    return replace(
        c,
        channels=channels,
        image_size=[height, width],
        hidden=c.hidden or list(HIDDEN[c.architecture]),
        likelihood=likelihood,
        binarize=binarize,
    )
