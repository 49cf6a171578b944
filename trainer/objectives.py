"""The VAE objectives, always one value per example (Kingma & Welling 2014).

log p(x) = ELBO + KL(q(z|x) || p(z|x)) >= ELBO, with
ELBO = E_q[log p(x|z)] - KL(q(z|x) || p(z)). The importance-weighted bound
(Burda et al. 2016) tightens it with k samples and equals it at k = 1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from trainer.likelihood import Likelihood, log_prob

_LOG_2PI = math.log(2 * math.pi)


def kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, diag exp(log_var)) || N(0, I)) in closed form (VAE paper, Appendix B)."""
    return 0.5 * (log_var.exp() + mean**2 - 1 - log_var).sum(-1)


def reparameterize(mean: torch.Tensor, log_var: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mean + sigma * eps; eps broadcasts over leading sample axes."""
    return mean + torch.exp(0.5 * log_var) * eps


def log_normal(z: torch.Tensor, mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """log N(z; mean, diag exp(log_var)) summed over the latent axis."""
    return -0.5 * (_LOG_2PI + log_var + (z - mean) ** 2 / log_var.exp()).sum(-1)


def log_standard_normal(z: torch.Tensor) -> torch.Tensor:
    return -0.5 * (_LOG_2PI + z**2).sum(-1)


@dataclass(frozen=True)
class Elbo:
    """Per-example terms, each of shape (B,)."""

    elbo: torch.Tensor
    reconstruction: torch.Tensor  # E_q[log p(x|z)], Monte Carlo over the samples drawn
    kl: torch.Tensor


def log_weights(
    likelihood: Likelihood,
    x: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    z: torch.Tensor,
    logits: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(x, z) - log q(z|x) and log p(x|z) for z of shape (k, B, L).

    Returns two (k, B) tensors: the importance log-weights and the reconstruction term.
    """
    rec = log_prob(likelihood, x, logits)  # (k, B)
    return rec + log_standard_normal(z) - log_normal(z, mean, log_var), rec


def iwae(log_w: torch.Tensor) -> torch.Tensor:
    """log (1/k) sum_k w_k for log-weights of shape (k, B) -> (B,)."""
    return torch.logsumexp(log_w, dim=0) - math.log(log_w.shape[0])


def elbo(
    likelihood: Likelihood,
    x: torch.Tensor,
    mean: torch.Tensor,
    log_var: torch.Tensor,
    logits: torch.Tensor,
    beta: float = 1.0,
) -> Elbo:
    """Single-sample ELBO with the KL in closed form; `logits` decoded from one z per example.

    beta < 1 weights the KL down during warm-up; the returned `elbo` is then
    the training objective, not a bound.
    """
    rec = log_prob(likelihood, x, logits)  # (B,)
    divergence = kl(mean, log_var)  # (B,)
    return Elbo(elbo=rec - beta * divergence, reconstruction=rec, kl=divergence)
