"""Pixel likelihoods p(x|z) parameterised by decoder logits.

Each is summed over every pixel and channel, so each returns one number per
example: x (..., C, H, W) with logits (..., P·C, H, W) -> (...), P the parameters
per value (vae_contract.manifest.parameters_per_value). The service repeats these
formulas in numpy (vae_contract.likelihood, docs/manifest.md); tests keep the two
in agreement.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vae_contract.likelihood import HALF_BIN, LEVELS, MIN_LOG_SCALE
from vae_contract.manifest import Likelihood, parameters_per_value

LIKELIHOODS: tuple[Likelihood, ...] = ("bernoulli", "continuous_bernoulli", "discretized_logistic")
__all__ = ["LIKELIHOODS", "Likelihood", "log_prob", "mean", "parameters_per_value"]

# Below this |logit| the continuous-Bernoulli normaliser uses its Taylor series:
# l / tanh(l/2) is 0/0 at l = 0.
_CB_TAYLOR = 1e-3


def _cb_log_norm(logits: torch.Tensor) -> torch.Tensor:
    """log C(l) for the continuous Bernoulli: C(l) = l / tanh(l/2), C(0) = 2."""
    safe = torch.where(logits.abs() < _CB_TAYLOR, torch.ones_like(logits), logits)
    exact = torch.log(safe / torch.tanh(safe / 2))
    taylor = math.log(2.0) + logits**2 / 12  # log(2 + l²/6) to second order
    return torch.where(logits.abs() < _CB_TAYLOR, taylor, exact)


def _split(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(location, log-scale) of a discretised logistic, stacked on the channel axis."""
    location, log_scale = logits.chunk(2, dim=-3)
    return location, log_scale.clamp(min=MIN_LOG_SCALE)


def _discretized_logistic(x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log P(8-bit value of x) per value; the formula of vae_contract.likelihood."""
    location, log_scale = _split(logits)
    level = torch.round(x * (LEVELS - 1)).clamp(0, LEVELS - 1)
    centred = 2 * level / (LEVELS - 1) - 1 - location
    inverse_scale = torch.exp(-log_scale)
    a = (centred + HALF_BIN) * inverse_scale
    b = (centred - HALF_BIN) * inverse_scale
    inner = (
        a - F.softplus(a) - F.softplus(b) + torch.log(-torch.expm1(-2 * HALF_BIN * inverse_scale))
    )
    return torch.where(
        level <= 0, -F.softplus(-a), torch.where(level >= LEVELS - 1, -F.softplus(b), inner)
    )


def log_prob(likelihood: Likelihood, x: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
    """log p(x|z) per example, x in [0, 1] with the same trailing (H, W) as logits."""
    if likelihood == "discretized_logistic":
        terms = _discretized_logistic(x, logits)
    elif likelihood in ("bernoulli", "continuous_bernoulli"):
        terms = x * logits - F.softplus(logits)
        if likelihood == "continuous_bernoulli":
            terms = terms + _cb_log_norm(logits)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}; expected one of {LIKELIHOODS}")
    return terms.flatten(start_dim=-3).sum(-1)


def mean(likelihood: Likelihood, logits: torch.Tensor) -> torch.Tensor:
    """E[x|z], the pixel means shown as images, (..., C, H, W) in [0, 1]."""
    if likelihood == "bernoulli":
        return torch.sigmoid(logits)
    if likelihood == "discretized_logistic":
        location, log_scale = _split(logits)
        s = log_scale.exp()
        clipped = -1 + s * (F.softplus((location + 1) / s) - F.softplus((location - 1) / s))
        return ((clipped + 1) / 2).clamp(0, 1)
    small = logits.abs() < _CB_TAYLOR
    safe = torch.where(small, torch.ones_like(logits), logits)
    exact = torch.sigmoid(safe) / torch.tanh(safe / 2) - 1 / safe
    return torch.where(small, 0.5 + logits / 12, exact)
