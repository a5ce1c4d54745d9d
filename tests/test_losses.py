"""Denoising score matching is minimised by the exact score; importance sampling of t is exact and unbiased."""

import math

import pytest
import torch

from scoresde import DSMLoss, VESDE, VPSDE, SubVPSDE


def _per_sample(loss, score_fn, sde, x0, seed):
    return loss.per_sample(score_fn, sde, x0, generator=torch.Generator().manual_seed(seed))


def test_exact_score_minimises_dsm(sde, ring):
    N = 20_000
    x0 = ring.sample(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ring.score_fn(sde)
    loss = DSMLoss()
    base = _per_sample(loss, exact, sde, x0, 1)
    for c in (0.8, 1.2):
        scaled = _per_sample(loss, lambda x, t, c=c: c * exact(x, t), sde, x0, 1)  # common random numbers
        diff = scaled - base
        assert diff.mean() > 5 * diff.std() / math.sqrt(N), c
    shifted = _per_sample(loss, lambda x, t: exact(x, t) + 0.3, sde, x0, 1)
    assert (shifted - base).mean() > 0


def test_gradient_wrt_score_scale_vanishes_at_the_exact_score(sde, ring):
    """d/dc E‖c sigma s* + z‖² = 2 E[sigma s*·(c sigma s* + z)]: zero at c = 1, negative below."""
    N = 20_000
    x0 = ring.sample(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ring.score_fn(sde)

    def grads(c0):
        # one scale per sample: a single backward pass gives every per-sample gradient
        c = torch.full((N,), c0, dtype=torch.float64, requires_grad=True)
        per = _per_sample(DSMLoss(), lambda x, t: c[:, None] * exact(x, t), sde, x0, 2)
        (g,) = torch.autograd.grad(per.sum(), c)
        return float(g.mean()), float(g.std()) / math.sqrt(N)

    g1, se1 = grads(1.0)
    assert abs(g1) < 4 * se1, (g1, se1)
    g08, se08 = grads(0.8)
    assert g08 < -10 * se08, (g08, se08)


def test_importance_sampling_matches_vp_closed_form_cdf():
    """For VP, q(t) ∝ g²/sigma² = beta/(1 - e^{-B}) has CDF ∝ log(expm1(B(t))), B(t) = ∫_0^t beta."""
    sde, eps = VPSDE(), 1e-5
    loss = DSMLoss(weighting="likelihood", sampling="importance", t_eps=eps)
    t, w = loss.sample_t(sde, 50_000, generator=torch.Generator().manual_seed(0))

    def F(t):
        B = sde.beta_min * t + 0.5 * (sde.beta_max - sde.beta_min) * t**2
        return torch.log(torch.expm1(B))

    lo, hi = F(torch.tensor(eps, dtype=torch.float64)), F(torch.tensor(1.0, dtype=torch.float64))
    cdf = (F(t.sort().values) - lo) / (hi - lo)
    emp = torch.arange(1, len(t) + 1, dtype=torch.float64) / len(t)
    ks = float((cdf - emp).abs().max())
    assert ks < 1.63 / math.sqrt(len(t)), ks  # KS test at the 1% level
    assert torch.allclose(w, torch.full_like(w, float(hi - lo) / (1 - eps)), rtol=1e-3)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "subvp", "ve"])
def test_importance_sampled_likelihood_loss_is_unbiased_and_less_noisy(sde, ring):
    N = 40_000
    x0 = ring.sample(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ring.score_fn(sde)

    def model(x, t):
        return 0.9 * exact(x, t)  # an imperfect score, so the loss carries signal

    uni = _per_sample(DSMLoss(weighting="likelihood"), model, sde, x0, 3)
    imp = _per_sample(DSMLoss(weighting="likelihood", sampling="importance"), model, sde, x0, 4)
    se = math.sqrt(uni.var() / N + imp.var() / N)
    assert abs(float(uni.mean() - imp.mean())) < 4 * se, (uni.mean(), imp.mean(), se)
    assert imp.std() <= uni.std() * 1.05


def test_sum_reduction_is_half_sum(ring):
    sde = VPSDE()
    x0 = ring.sample(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.rand(64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    z = torch.randn(64, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def model(x, t):
        return torch.zeros_like(x)

    mean = DSMLoss().per_sample(model, sde, x0, t=t, z=z)
    total = DSMLoss(reduction="sum").per_sample(model, sde, x0, t=t, z=z)
    assert torch.allclose(total, 0.5 * 2 * mean)
    assert torch.allclose(mean, (z**2).mean(1))  # zero score leaves ‖z‖²


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weighting": "snr"}, "available: sigma2, likelihood, edm"),
        ({"reduction": "max"}, "available: mean, sum"),
        ({"sampling": "importance"}, "likelihood"),
        ({"sampling": "sobol"}, "available: uniform, importance, log_normal"),
        ({"t_eps": 0.0}, "t_eps must be > 0"),
    ],
)
def test_bad_loss_options_are_explained(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DSMLoss(**kwargs)


def test_t_eps_beyond_T_is_explained(ring):
    with pytest.raises(ValueError, match="below the SDE's end time"):
        DSMLoss(t_eps=2.0)(ring.score_fn(VPSDE()), VPSDE(), torch.zeros(4, 2))


def test_edm_loss_is_unit_weight_on_the_network_target(ring):
    """Karras et al. (2022) eq. 8: with the edm prediction, λ(σ)‖D - x0‖² = ‖F - (x0 - c_skip x̃)/c_out‖² exactly."""
    from torch import nn

    from scoresde import ScoreModel
    from scoresde._utils import append_dims

    sde, sd = VPSDE(), 0.5
    net = nn.Linear(2, 2).double()
    model = ScoreModel(lambda x, c: net(x) * c[:, None], sde, prediction="edm", sigma_data=sd)
    g = torch.Generator().manual_seed(0)
    x0 = ring.sample(256, generator=g, dtype=torch.float64)
    t = 1e-3 + torch.rand(256, generator=g, dtype=torch.float64) * (1 - 1e-3)
    z = torch.randn(256, 2, generator=g, dtype=torch.float64)
    loss = DSMLoss(weighting="edm", sampling="log_normal", sigma_data=sd).per_sample(model, sde, x0, t=t, z=z)

    a, s = (append_dims(f(t), 2) for f in (sde.alpha, sde.sigma))
    sig = s / a
    x_t = a * x0 + s * z
    F = model.raw(x_t, t)
    target = (x0 - sd**2 / (sig**2 + sd**2) * (x_t / a)) / (sig * sd / torch.sqrt(sig**2 + sd**2))
    assert torch.allclose(loss, ((F - target) ** 2).mean(1), rtol=1e-10)


@pytest.mark.parametrize("sde", [VPSDE(), SubVPSDE(), VESDE(sigma_min=0.002, sigma_max=80.0)], ids=["vp", "subvp", "ve"])
def test_log_normal_sampling_draws_ln_sigma_from_the_normal(sde):
    """ln(sigma_t/alpha_t) = P_mean + P_std Φ⁻¹(u) exactly wherever that σ lies inside [t_eps, T], clamped outside."""
    loss = DSMLoss(weighting="edm", sampling="log_normal", P_mean=-1.2, P_std=1.2)
    u = torch.rand(20_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t, w = loss.sample_t(sde, len(u), u=u)
    ln_sigma = -sde.log_snr(t)
    want = -1.2 + 1.2 * torch.special.ndtri(u)
    lo, hi = -sde.log_snr(torch.tensor([loss.t_eps, sde.T], dtype=torch.float64))
    inside = (want > lo) & (want < hi)
    assert inside.float().mean() > 0.95
    assert torch.allclose(ln_sigma[inside], want[inside], atol=1e-8)
    assert torch.allclose(ln_sigma[~inside], want[~inside].clamp(lo, hi), atol=1e-8)
    assert torch.allclose(w, (torch.exp(2 * ln_sigma) + 0.25) / 0.25)


@pytest.mark.parametrize("weighting, sampling", [("edm", "log_normal"), ("edm", "uniform"), ("sigma2", "log_normal")])
def test_exact_score_minimises_the_edm_loss(weighting, sampling, ring):
    N, sde = 20_000, VPSDE()
    x0 = ring.sample(N, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = ring.score_fn(sde)
    loss = DSMLoss(weighting=weighting, sampling=sampling)
    base = _per_sample(loss, exact, sde, x0, 1)
    for c in (0.9, 1.1):
        diff = _per_sample(loss, lambda x, t, c=c: c * exact(x, t), sde, x0, 1) - base
        assert diff.mean() > 5 * diff.std() / math.sqrt(N), (c, diff.mean(), diff.std())
