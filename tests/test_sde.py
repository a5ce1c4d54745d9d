"""The SDEs against exact answers: Monte Carlo of the forward SDE (torchsde), float32 stability, the prior density,
consistency of drift/diffusion with the marginals (Fokker–Planck), exact discretization, and input errors."""

import math

import pytest
import torch
import torchsde

from scoresde import VESDE, VPSDE, SubVPSDE, get_sde
from scoresde._utils import append_dims
from tests.conftest import SDE_IDS, all_sdes


class _Forward(torch.nn.Module):
    """The forward SDE in torchsde's form (Itô, diagonal noise)."""

    noise_type, sde_type = "diagonal", "ito"

    def __init__(self, sde):
        super().__init__()
        self.sde = sde

    def f(self, t, y):
        return self.sde.drift(y, t.expand(len(y)).to(torch.float64))

    def g(self, t, y):
        return append_dims(self.sde.diffusion(t.expand(len(y)).to(torch.float64)), 2).expand_as(y)


@pytest.mark.parametrize("idx", range(3), ids=SDE_IDS)
def test_marginal_prob_matches_monte_carlo_of_forward_sde(idx):
    sde = all_sdes()[idx]
    N, x0 = 10_000, torch.tensor([1.5, -0.5], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    y0 = x0.expand(N, 2).clone()
    if isinstance(sde, VESDE):  # time 0 of the VE SDE holds the data convolved with N(0, sigma_min²) (documented convention)
        y0 += sde.sigma_min * torch.randn(N, 2, generator=g, dtype=torch.float64)
    ts = torch.tensor([0.0, 0.1, 0.5, 1.0], dtype=torch.float64)
    bm = torchsde.BrownianInterval(0.0, 1.0, size=(N, 2), dtype=torch.float64, entropy=0, dt=2e-3, levy_area_approximation="space-time")
    ys = torchsde.sdeint(_Forward(sde), y0, ts, bm=bm, method="srk", dt=2e-3)
    for i, t in enumerate(ts[1:].tolist(), start=1):
        mean, std = sde.marginal_prob(x0[None], torch.tensor([t], dtype=torch.float64))
        emp_mean, emp_std = ys[i].mean(0), ys[i].std(0)
        se = float(std) / math.sqrt(N)
        assert torch.allclose(emp_mean, mean[0], atol=5 * se + 1e-3), (t, emp_mean, mean)
        assert torch.allclose(emp_std, std.expand(2), rtol=0.02), (t, emp_std, std)


@pytest.mark.parametrize("idx", range(3), ids=SDE_IDS)
def test_float32_std_near_zero_is_accurate(idx):
    sde = all_sdes()[idx]
    t32 = torch.tensor([1e-5, 1e-4, 1e-3])
    exact = sde.sigma(t32.double())
    assert torch.allclose(sde.sigma(t32).double(), exact, rtol=1e-3)
    if isinstance(sde, VPSDE) and not isinstance(sde, SubVPSDE):
        # the naive sqrt(1 - alpha²) is what this guards against: it is off by percent at t = 1e-5 in float32
        naive = torch.sqrt(1 - sde.alpha(t32) ** 2).double()
        assert (naive[0] / exact[0] - 1).abs() > 1e-2


def test_vp_std_at_1e5_against_closed_form():
    sde, t = VPSDE(), 1e-5
    lmc = -0.25 * t**2 * (20.0 - 0.1) - 0.5 * t * 0.1
    exact = math.sqrt(-math.expm1(2 * lmc))
    got = float(sde.sigma(torch.tensor([t], dtype=torch.float32)))
    assert abs(got / exact - 1) < 1e-3


def test_prior_logp_matches_torch_distributions(sde, gen):
    z = sde.prior_sample((16, 3, 2), generator=gen, dtype=torch.float64)
    loc, scale = torch.tensor(0.0, dtype=torch.float64), torch.tensor(sde.prior_std, dtype=torch.float64)
    ref = torch.distributions.Normal(loc, scale).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(sde.prior_logp(z), ref, rtol=1e-10)
    assert abs(float(z.std()) / sde.prior_std - 1) < 0.2


def test_probability_flow_transports_gaussian_marginals(sde):
    """For data N(0, s² I) the PF-ODE is linear, dx/dt = c(t) x, and must satisfy c = d log v_t / dt with
    v_t² = alpha_t² s² + sigma_t² (the Fokker–Planck equation); this ties drift and diffusion to alpha and sigma."""
    s2 = 0.49
    t = torch.linspace(0.05, 0.95, 19, dtype=torch.float64)

    def v2(t):
        return sde.alpha(t) ** 2 * s2 + sde.sigma(t) ** 2

    def score(x, t):
        return -x / append_dims(v2(t), x.ndim)

    h = 1e-6
    dlogv_dt = 0.25 * (torch.log(v2(t + h)) - torch.log(v2(t - h))) / h
    x = torch.ones(len(t), 2, dtype=torch.float64)
    c = sde.probability_flow(score).drift(x, t)[:, 0]
    assert torch.allclose(c, dlogv_dt, rtol=1e-6, atol=1e-8)
    # reverse SDE drift is f - g² s = 2 (PF drift) - f
    rev = sde.reverse(score).drift(x, t)
    assert torch.allclose(rev, 2 * sde.probability_flow(score).drift(x, t) - sde.drift(x, t), atol=1e-12)


def test_discretize_composes_to_the_marginal(sde):
    """Two exact transitions 0 → t1 → t2 reproduce the kernel at t2: mean alpha_t2 x0, var sigma_t2² - alpha_t2² sigma_0²."""
    t0, t1, t2 = (torch.tensor([v], dtype=torch.float64) for v in (0.0, 0.3, 0.8))
    x = torch.ones(1, 2, dtype=torch.float64)
    f1, G1 = sde.discretize(x, t1, t0)
    a1 = 1 + f1[0, 0]
    f2, G2 = sde.discretize(x, t2, t1)
    a2 = 1 + f2[0, 0]
    assert torch.allclose(a1 * a2, sde.alpha(t2)[0] / sde.alpha(t0)[0], rtol=1e-12)
    var = a2**2 * G1**2 + G2**2
    assert torch.allclose(var, sde.sigma(t2) ** 2 - sde.alpha(t2) ** 2 * sde.sigma(t0) ** 2, rtol=1e-10)


def test_vp_discretize_is_ddpm_beta():
    sde = VPSDE()
    t, s = torch.tensor([0.5], dtype=torch.float64), torch.tensor([0.499], dtype=torch.float64)
    _, G = sde.discretize(torch.ones(1, 1, dtype=torch.float64), t, s)
    beta_i = 1 - (sde.alpha(t) / sde.alpha(s)) ** 2
    assert torch.allclose(G**2, beta_i, rtol=1e-12)
    # and to first order it is beta(t) dt
    assert torch.allclose(G**2, sde.beta(t) * 1e-3, rtol=1e-2)


def test_log_snr_matches_definition(sde):
    t = torch.linspace(1e-4, 1.0, 50, dtype=torch.float64)
    assert torch.allclose(sde.log_snr(t), torch.log(sde.alpha(t) / sde.sigma(t)), rtol=1e-10, atol=1e-10)


def test_subvp_std_below_vp_std():
    t = torch.linspace(0.01, 1.0, 50, dtype=torch.float64)
    assert bool((SubVPSDE().sigma(t) < VPSDE().sigma(t)).all())


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: VPSDE(beta_min=20.0, beta_max=0.1), "beta_min < beta_max"),
        (lambda: SubVPSDE(beta_min=-1.0), "beta_min < beta_max"),
        (lambda: VESDE(sigma_min=0.0), "0 < sigma_min < sigma_max"),
        (lambda: VESDE(sigma_min=5.0, sigma_max=1.0), "0 < sigma_min < sigma_max"),
        (lambda: VPSDE(T=0.0), "T > 0"),
        (lambda: get_sde("edm"), "available: subvp, ve, vp"),
    ],
)
def test_bad_construction_is_explained(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_bad_times_and_shapes_are_explained():
    sde = VPSDE()
    with pytest.raises(ValueError, match=r"must lie in \[0, T\]"):
        sde.alpha(torch.tensor([1.5]))
    with pytest.raises(ValueError, match=r"must lie in \[0, T\]"):
        sde.marginal_prob(torch.zeros(2, 2), torch.tensor([-0.1, 0.5]))
    with pytest.raises(ValueError, match=r"shape \(B,\)"):
        sde.sigma(torch.tensor(0.5))
    with pytest.raises(ValueError, match="batch size 3"):
        sde.marginal_prob(torch.zeros(3, 2), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"\(B, \*D\)"):
        sde.drift(torch.zeros(2), torch.tensor([0.1, 0.2]))
    with pytest.raises(ValueError, match="t_next <= t"):
        sde.discretize(torch.zeros(1, 2), torch.tensor([0.2]), torch.tensor([0.3]))
