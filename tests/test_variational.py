"""The continuous-time variational bound (``scoresde.variational.elbo``) against exact densities.

With the exact score the reverse SDE's marginal is the data's, so the bound is tight: with the exact ``p_T`` as prior
it equals ``-log p_eps(x)`` per point up to ``O(sigma_eps²)``, and with ``N(0, I)`` its mean over the data equals the
ODE's (both are the entropy plus ``KL(p_T || N(0, I))``: the flow is invertible). With a wrong score the bound lies
above the data's entropy (Gibbs). Each estimate carries its Monte Carlo standard error, and the tests use it.
"""

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, GaussianMixture, SubVPSDE, log_likelihood
from scoresde.variational import elbo
from scoresde.noise import PerSampleNoise, derive_seeds

F64 = torch.float64
LN2 = math.log(2.0)
T_EPS = 1e-5


def _targets():
    return {"ring": GaussianMixture.ring(), "mix16": GaussianMixture.random(16, k=4, cond=100.0, scale=0.5, seed=2)}


def _exact_pT(mix, sde):
    return lambda z: mix.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=F64), sde)


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE, VESDE], ids=["vp", "subvp", "ve"])
def test_with_the_exact_score_and_p_T_the_bound_is_the_exact_log_density(sde_cls):
    """Every point's estimate lies within its standard error of ``log p_eps(x)``: the pooled mean error is within
    4 pooled standard errors (under 0.02 bits/dim over 1,000 points), and the standardized errors have unit spread,
    so the reported standard errors are right."""
    sde = sde_cls()
    for name, mix in _targets().items():
        x = mix.sample(1000, generator=torch.Generator().manual_seed(2), dtype=F64)
        exact = mix.log_prob(x, torch.full((1000,), T_EPS, dtype=F64), sde)
        res = elbo(mix.score_fn(sde), sde, x, prior=_exact_pT(mix, sde), generator=torch.Generator().manual_seed(0))
        err, pooled = res.logp - exact, res.stderr.pow(2).sum().sqrt() / len(x)
        assert abs(float(err.mean())) < 4 * float(pooled), (name, float(err.mean()), float(pooled))
        assert float(pooled) / (x[0].numel() * LN2) < 0.02, name
        z = float((err / res.stderr).std())
        assert 0.8 < z < 1.35, (name, z)
        assert torch.allclose(res.logp, res.prior - res.diffusion + res.drift)


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE], ids=["vp", "subvp"])
def test_with_the_standard_prior_the_bound_matches_the_ode_on_average(sde_cls):
    """``N(0, I)`` at ``T``: the mean bound equals the mean ODE bits/dim (both the entropy plus the prior's KL)
    within 4 pooled standard errors (under 0.03 bits/dim over 400 points)."""
    sde = sde_cls()
    for name, mix in _targets().items():
        x = mix.sample(400, generator=torch.Generator().manual_seed(3), dtype=F64)
        D = x[0].numel()
        bound = elbo(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1))
        ode = log_likelihood(mix.score_fn(sde), sde, x)
        pooled = float(bound.stderr.pow(2).sum().sqrt() / len(x))
        gap = float((ode.logp - bound.logp).mean())  # >= 0 up to noise
        assert abs(gap) < 4 * pooled, (name, gap, pooled)
        assert pooled / (D * LN2) < 0.03, name


def test_a_wrong_score_lies_above_the_entropy():
    """The ring's score with its means pulled in by 10 %: the bound is above the exact entropy by many standard
    errors, while the exact score's is not."""
    sde, mix = VPSDE(), GaussianMixture.ring()
    wrong = GaussianMixture(mix.weights, 0.9 * mix.means, mix.covs)
    x = mix.sample(400, generator=torch.Generator().manual_seed(4), dtype=F64)
    entropy = -mix.log_prob(x, torch.full((400,), T_EPS, dtype=F64), sde)
    for score, far in ((wrong.score_fn(sde), True), (mix.score_fn(sde), False)):
        res = elbo(score, sde, x, prior=_exact_pT(mix, sde), generator=torch.Generator().manual_seed(5))
        pooled = float(res.stderr.pow(2).sum().sqrt() / len(x))
        excess = float((-res.logp - entropy).mean())
        assert (excess > 10 * pooled) if far else (abs(excess) < 4 * pooled), (far, excess, pooled)


def test_per_sample_noise_makes_the_bound_independent_of_the_batch():
    sde, mix = VPSDE(), GaussianMixture.ring()
    x = mix.sample(12, generator=torch.Generator().manual_seed(6), dtype=F64)
    whole = elbo(mix.score_fn(sde), sde, x, n_t=32, noise=PerSampleNoise(derive_seeds(0, 0, 12)))
    part = elbo(mix.score_fn(sde), sde, x[5:9], n_t=32, noise=PerSampleNoise(derive_seeds(0, 0, 12)[5:9]))
    assert torch.allclose(part.logp, whole.logp[5:9], atol=1e-12, rtol=0)


def test_bad_arguments_get_one_line():
    sde, x = VPSDE(), torch.zeros(3, 2, dtype=F64)
    with pytest.raises(ValueError, match="n_t must be even"):
        elbo(lambda x, t: -x, sde, x, n_t=3)
    with pytest.raises(ValueError, match="t_eps must lie in"):
        elbo(lambda x, t: -x, sde, x, t_eps=1.5)
