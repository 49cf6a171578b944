"""Settle what the data decides: channels, image size, architecture, likelihood,
binarisation, widths; refuse settings that contradict the data, and warn about
doubtful ones.

The likelihood follows the pixels. Near-binary grey images (MNIST: 91% of the
pixels within 10% of black or white) get a Bernoulli likelihood with dynamic
binarisation, the protocol of the MNIST log-likelihood literature. Grey values
(Fashion-MNIST: 61%) and colour get the discretised logistic, a probability for
each of the 256 values of each sub-pixel: its bits/dim are those that PixelCNN++
and IAF report for CIFAR-10, positive and comparable. (A Bernoulli likelihood on
grey values is no density of them; the continuous Bernoulli, still offered, is a
density on [0, 1], whose log-likelihoods of smooth images are positive and
comparable with no published figure.)

The architecture follows the image size: an MLP on small grey images (28×28, where
it matches a small conv net at a fraction of the time), a conv net otherwise,
whose weights do not grow with the number of pixels as an MLP's first layer does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from trainer.config import HIDDEN, TrainConfig
from trainer.data import Dataset, Images, take

MLP_MAX_PIXELS = 28 * 28  # grey images up to this size get an MLP by default
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
    likelihood = c.likelihood or ("bernoulli" if binary or c.binarize else "discretized_logistic")
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
            raise ConfigError(message + "; drop it: colour gets discretized_logistic")
        warn(message)
    if binarize is None:
        binarize = likelihood == "bernoulli" and binary
    if likelihood == "bernoulli" and not binarize and not binary:
        warn(
            "a bernoulli likelihood on grey values is not a density of them: its ELBO is no "
            "log-likelihood (discretized_logistic is)"
        )
    small_grey = channels == 1 and height * width <= MLP_MAX_PIXELS
    architecture = c.architecture or ("mlp" if small_grey else "conv")
    return replace(
        c,
        channels=channels,
        image_size=[height, width],
        architecture=architecture,
        hidden=c.hidden or list(HIDDEN[architecture]),
        likelihood=likelihood,
        binarize=binarize,
    )
