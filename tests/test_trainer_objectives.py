"""The objectives against hand-computed values and Monte Carlo estimates."""

from __future__ import annotations

import math

import pytest
import torch

from trainer.likelihood import log_prob, mean
from trainer.model import VAE, Shape
from trainer.objectives import elbo, iwae, kl, log_normal, log_weights, reparameterize


def test_kl_matches_hand_computed_value() -> None:
    # One example, two latents: mean (1, 0), variance (1, e).
    m = torch.tensor([[1.0, 0.0]])
    log_var = torch.tensor([[0.0, 1.0]])
    # 0.5 * [(1 + 1 - 1 - 0) + (e + 0 - 1 - 1)] = 0.5 * (e - 1)
    assert kl(m, log_var).item() == pytest.approx(0.5 * (math.e - 1), rel=1e-6)


def test_kl_is_zero_only_at_the_prior() -> None:
    assert kl(torch.zeros(1, 4), torch.zeros(1, 4)).item() == 0.0
    assert kl(torch.full((1, 4), 0.1), torch.zeros(1, 4)).item() > 0


def test_closed_form_kl_agrees_with_monte_carlo() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(3, 5, generator=g)
    log_var = torch.randn(3, 5, generator=g) * 0.5
    eps = torch.randn(200_000, 3, 5, generator=g)
    z = reparameterize(m, log_var, eps)
    prior = -0.5 * (math.log(2 * math.pi) + z**2).sum(-1)
    estimate = (log_normal(z, m, log_var) - prior).mean(0)
    torch.testing.assert_close(estimate, kl(m, log_var), atol=0.03, rtol=0.01)


def test_bernoulli_log_prob_matches_hand_computed_value() -> None:
    # Two pixels with p = sigmoid(0) = 0.5 and p = sigmoid(ln 3) = 0.75, x = (1, 0).
    logits = torch.tensor([0.0, math.log(3.0)]).reshape(1, 1, 1, 2)
    x = torch.tensor([1.0, 0.0]).reshape(1, 1, 1, 2)
    expected = math.log(0.5) + math.log(0.25)
    assert log_prob("bernoulli", x, logits).item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("logit", [-8.0, -1.0, -1e-4, 0.0, 1e-4, 0.5, 6.0])
def test_continuous_bernoulli_is_a_density_with_the_stated_mean(logit: float) -> None:
    grid = torch.linspace(0, 1, 200_001, dtype=torch.float64).reshape(-1, 1, 1, 1)
    logits = torch.full_like(grid, logit)
    density = log_prob("continuous_bernoulli", grid, logits).exp()
    assert torch.trapezoid(density, grid.flatten()).item() == pytest.approx(1.0, abs=1e-6)
    first_moment = torch.trapezoid(density * grid.flatten(), grid.flatten()).item()
    assert mean(
        "continuous_bernoulli", torch.tensor(logit, dtype=torch.float64)
    ).item() == pytest.approx(first_moment, abs=1e-6)


def test_elbo_terms_are_per_example_and_add_up() -> None:
    m = torch.tensor([[0.0, 0.0], [1.0, -1.0]])
    log_var = torch.zeros(2, 2)
    logits = torch.zeros(2, 1, 1, 3)
    x = torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]).reshape(2, 1, 1, 3)
    out = elbo("bernoulli", x, m, log_var, logits)
    assert out.reconstruction.tolist() == pytest.approx([3 * math.log(0.5)] * 2)
    assert out.kl.tolist() == pytest.approx([0.0, 1.0])
    assert out.elbo.tolist() == pytest.approx([3 * math.log(0.5), 3 * math.log(0.5) - 1.0])


def test_per_example_elbo_does_not_depend_on_the_rest_of_the_batch() -> None:
    torch.manual_seed(0)
    model = VAE(Shape(1, 8, 8), 4, "mlp", [16]).eval()
    x = torch.rand(6, 1, 8, 8)
    eps = torch.randn(6, 4)

    def per_example(batch: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        m, log_var = model.encode(batch)
        logits = model.decode(reparameterize(m, log_var, noise))
        return elbo("bernoulli", batch, m, log_var, logits).elbo

    with torch.no_grad():
        whole = per_example(x, eps)
        alone = torch.cat([per_example(x[i : i + 1], eps[i : i + 1]) for i in range(6)])
        reordered = per_example(x.flip(0), eps.flip(0)).flip(0)
    torch.testing.assert_close(alone, whole, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(reordered, whole, atol=1e-4, rtol=1e-5)


def test_iwae_bound_is_above_the_elbo_and_grows_with_k() -> None:
    torch.manual_seed(0)
    model = VAE(Shape(1, 8, 8), 4, "mlp", [16]).eval()
    x = torch.bernoulli(torch.rand(64, 1, 8, 8))
    with torch.no_grad():
        m, log_var = model.encode(x)
        z = reparameterize(m, log_var, torch.randn(2000, *m.shape))
        closed_form = elbo("bernoulli", x, m, log_var, model.decode(z)).elbo.mean()

        def bound(k: int, repeats: int = 400) -> float:
            z = reparameterize(m, log_var, torch.randn(repeats, k, *m.shape))
            log_w, _ = log_weights("bernoulli", x, m, log_var, z, model.decode(z))
            return torch.stack([iwae(w) for w in log_w]).mean().item()  # over repeats and x

        bounds = [bound(k) for k in (1, 5, 50)]
    # At k = 1 the bound is the ELBO with a Monte Carlo KL: equal in expectation.
    assert bounds[0] == pytest.approx(closed_form.item(), abs=0.05)
    assert closed_form.item() < bounds[1] < bounds[2]
