"""Pixel likelihoods p(x|z) parameterised by decoder logits.

Both are summed over every pixel and channel, so each returns one number per
example: shape (..., C, H, W) -> (...). The service repeats these formulas in
numpy (see docs/manifest.md); tests keep the two in agreement.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F

Likelihood = Literal["bernoulli", "continuous_bernoulli"]
LIKELIHOODS: tuple[Likelihood, ...] = ("bernoulli", "continuous_bernoulli")

# Below this |logit| the continuous-Bernoulli normaliser uses its Taylor series:
# l / tanh(l/2) is 0/0 at l = 0.
_CB_TAYLOR = 1e-3


def _cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) for the continuous Bernoulli: C(l) = l / tanh(l/2), C(0) = 2."""
    safe = torch.where(logits.abs() < _CB_TAYLOR, torch.ones_like(logits), logits)
    exact = torch.log(safe / torch.tanh(safe / 2))
    taylor = math.log(2.0) + logits**2 / 12  # log(2 + l²/6) to second order
    return torch.where(logits.abs() < _CB_TAYLOR, taylor, exact)


def log_prob(likelihood: Likelihood, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per example, x in [0, 1] with the same trailing (C, H, W) as logits."""
    bernoulli = x * logits - F.softplus(logits)
    if likelihood == "continuous_bernoulli":
        bernoulli = bernoulli + _cb_log_norm(logits)
    elif likelihood != "bernoulli":
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
    return bernoulli.flatten(start_dim=-3).sum(-1)


def mean(likelihood: Likelihood, logits: torch.Tensor) -> torch.Tensor:
    """E[x|z], the pixel means shown as images."""
    if likelihood == "bernoulli":
        return torch.sigmoid(logits)
    small = logits.abs() < _CB_TAYLOR
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe
    return torch.where(small, 0.5 + logits / 12, exact)
