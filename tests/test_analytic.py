"""The analytic mixture is the ground truth for everything else, so it is checked against independent references:
torch.distributions densities, autograd of its own log-density, Tweedie's formula and sample moments."""

import pytest
import torch
from torch.distributions import Categorical, MixtureSameFamily, MultivariateNormal

from scoresde import GaussianMixture, VPSDE
from scoresde._utils import append_dims


@pytest.fixture
def gm3():
    return GaussianMixture.random(3, k=4, cond=100.0, scale=0.8, seed=3)


def _reference(gm, alpha=1.0, sigma=0.0):
    cov = alpha**2 * gm.covs + sigma**2 * torch.eye(gm.dim, dtype=torch.float64)
    return MixtureSameFamily(Categorical(gm.weights), MultivariateNormal(alpha * gm.means, covariance_matrix=cov))


def test_log_prob_matches_torch_distributions(gm3, sde, gen):
    x = 2 * torch.randn(64, 3, generator=gen, dtype=torch.float64)
    assert torch.allclose(gm3.log_prob(x), _reference(gm3).log_prob(x), rtol=1e-10)
    for tv in (1e-3, 0.3, 1.0):
        t = torch.full((64,), tv, dtype=torch.float64)
        a, s = float(sde.alpha(t)[0]), float(sde.sigma(t)[0])
        assert torch.allclose(gm3.log_prob(x, t, sde), _reference(gm3, a, s).log_prob(x), rtol=1e-10)


def test_score_is_gradient_of_log_prob(gm3, sde, gen):
    x = (2 * torch.randn(32, 3, generator=gen, dtype=torch.float64)).requires_grad_()
    for tv in (None, 1e-3, 0.3, 1.0):
        t = None if tv is None else torch.full((32,), tv, dtype=torch.float64)
        s = sde if tv is not None else None
        (grad,) = torch.autograd.grad(gm3.log_prob(x, t, s).sum(), x)
        assert torch.allclose(gm3.score(x, t, s), grad, rtol=1e-9, atol=1e-12)


def test_denoiser_satisfies_tweedie(gm3, sde, gen):
    x = 2 * torch.randn(32, 3, generator=gen, dtype=torch.float64)
    for tv in (1e-3, 0.3, 0.9):
        t = torch.full((32,), tv, dtype=torch.float64)
        a, s = (append_dims(c(t), 2) for c in (sde.alpha, sde.sigma))
        tweedie = (x + s**2 * gm3.score(x, t, sde)) / a
        assert torch.allclose(gm3.denoise(x, t, sde), tweedie, rtol=1e-8, atol=1e-10)


def test_denoiser_matches_monte_carlo_posterior_mean(gen):
    """E[x_0 | x_t] by self-normalised importance sampling of x_0 ~ p_0 with weights p(x_t | x_0)."""
    gm, sde = GaussianMixture.ring(), VPSDE()
    t = torch.tensor([0.4], dtype=torch.float64)
    a, s = float(sde.alpha(t)), float(sde.sigma(t))
    x_t = torch.tensor([[0.3, 0.9]], dtype=torch.float64)
    x0 = gm.sample(400_000, generator=gen, dtype=torch.float64)
    logw = -((x_t - a * x0) ** 2).sum(1) / (2 * s**2)
    w = torch.softmax(logw, 0)
    mc = (w[:, None] * x0).sum(0)
    assert torch.allclose(gm.denoise(x_t, t, sde)[0], mc, atol=5e-3)


def test_samples_have_the_analytic_moments(gm3, gen):
    x, k = gm3.sample(200_000, generator=gen, dtype=torch.float64, return_labels=True)
    assert torch.allclose(x.mean(0), gm3.mean, atol=0.02)
    assert torch.allclose(torch.cov(x.T), gm3.cov, atol=0.05)
    share = torch.bincount(k, minlength=4).double() / len(k)
    assert torch.allclose(share, gm3.weights, atol=0.005)


def test_image_shaped_mixture(gen):
    gm = GaussianMixture.random(64, k=2, shape=(1, 8, 8), seed=1)
    x = gm.sample(5, generator=gen)
    assert x.shape == (5, 1, 8, 8)
    t = torch.full((5,), 0.5)
    assert gm.score(x, t, VPSDE()).shape == (5, 1, 8, 8)
    assert torch.allclose(gm.log_prob(x.double()), gm.log_prob(x.double().flatten(1)))


def test_bad_mixtures_are_explained():
    with pytest.raises(ValueError, match="positive definite"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.0], [0.0, -1.0]]])
    with pytest.raises(ValueError, match=r"weights must have shape \(K,\)"):
        GaussianMixture([1.0, 1.0], [[0.0, 0.0]], [1.0])
    with pytest.raises(ValueError, match="symmetric"):
        GaussianMixture([1.0], [[0.0, 0.0]], [[[1.0, 0.5], [0.0, 1.0]]])
    gm = GaussianMixture.ring()
    with pytest.raises(ValueError, match="D=2"):
        gm.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="together with t"):
        gm.score(torch.zeros(3, 2), torch.zeros(3))
