"""The per-pixel maps of /elbo/map, in numpy (docs/manifest.md, "The maps").

- `nats`: -log p(x_i|z) at z = mean of q(z|x), summed over channels, (N, H, W). One-sided:
  high where x is unlikely. Its scale depends on the likelihood (a continuous Bernoulli's
  nats are negative on smooth images), and a flat smudge on a texture costs *fewer*
  nats than the texture it hides.
- `deviation`: two-sided and unit-free. Around each pixel, a WINDOW × WINDOW
  neighbourhood's nats minus what they cost on average when the model is right,
  divided by that sum's standard deviation then:
  (Σ nats - Σ E[nats]) / sqrt(Σ Var[nats]), sums over the window and the channels,
  moments from vae_contract.likelihood.surprise_moments. About N(0, 1) where the image
  is as the model expects; large and positive where it is more surprising, large and
  negative where it is more predictable than the model's own samples (a smudge, a
  flat patch). The same scale suits every likelihood.
"""

from __future__ import annotations

import numpy as np

from vae_contract.likelihood import log_likelihood_terms, surprise_moments
from vae_contract.manifest import Likelihood

WINDOW = 5  # pixels on a side of the deviation's neighbourhood


def nats(x: np.ndarray, logits: np.ndarray, likelihood: Likelihood) -> np.ndarray:
    """x (N, C, H, W), logits (N, P·C, H, W) -> -log p(x_i|z) summed over channels (N, H, W)."""
    result: np.ndarray = -log_likelihood_terms(x, logits, likelihood, axis=-3).sum(axis=1)
    return result


def _box(a: np.ndarray, window: int) -> np.ndarray:
    """Sums of (N, H, W) over window × window neighbourhoods, cut at the image's edge."""
    r = window // 2
    padded = np.pad(a, ((0, 0), (r + 1, r), (r + 1, r)))
    total = padded.cumsum(axis=1).cumsum(axis=2)
    h, w = a.shape[1:]
    result: np.ndarray = (
        total[:, window:, window:]
        - total[:, :h, window:]
        - total[:, window:, :w]
        + total[:, :h, :w]
    )
    return result


def deviation(
    surprise: np.ndarray, logits: np.ndarray, likelihood: Likelihood, window: int = WINDOW
) -> np.ndarray:
    """The two-sided map (N, H, W) from the `nats` map and the logits it was measured at."""
    expected, variance = surprise_moments(logits, likelihood)
    excess = _box(surprise - expected.sum(axis=1), window)
    spread = np.sqrt(np.maximum(_box(variance.sum(axis=1), window), 1e-12))
    result: np.ndarray = excess / spread
    return result
