"""Discrete-time VP schedules (DDPM's beta tables, DPM-Solver's continuous-time convention) and the continuous cosine
VP SDE, against their closed forms."""

import math

import pytest
import torch

from scoresde import CosineVPSDE, DiscreteVPSDE, ScoreModel
from scoresde._utils import append_dims
from scoresde.sde.discrete import cosine_betas, linear_betas, scaled_linear_betas

F64 = torch.float64


def _abar(u, s=0.008):
    return torch.cos((u + s) / (1 + s) * math.pi / 2) ** 2


def test_the_grid_points_carry_the_table_and_log_snr_is_linear_between_them():
    sde = DiscreteVPSDE.linear()
    n = torch.arange(1000)
    t = sde.time_of(n)
    assert torch.equal(t, (n + 1).double() / 1000) and sde.sampling_eps == 1e-3
    assert torch.equal(sde.alphas_cumprod, torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=F64), 0))
    assert float((sde.alpha(t) ** 2 - sde.alphas_cumprod).abs().max()) < 1e-15
    assert float((sde.alpha(t) ** 2 + sde.sigma(t) ** 2 - 1).abs().max()) < 1e-15
    lam = sde.log_snr(t)
    mid = 0.5 * (t[1:] + t[:-1])
    assert float((sde.log_snr(mid) - 0.5 * (lam[1:] + lam[:-1])).abs().max()) < 1e-12  # linear in between
    assert torch.equal(sde.t_from_log_snr(lam), t)  # exact inverse at the knots
    u = torch.rand(10_000, generator=torch.Generator().manual_seed(0), dtype=F64) * (1 - 1e-3) + 1e-3
    assert float((sde.t_from_log_snr(sde.log_snr(u)) - u).abs().max()) < 1e-14  # and on the interpolant
    assert float((sde.timestep_of(t) - n).abs().max()) < 1e-12


def test_the_usual_tables():
    assert torch.equal(scaled_linear_betas(), torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=F64) ** 2)
    assert linear_betas()[0] == 1e-4 and abs(float(linear_betas()[-1]) - 0.02) < 1e-17
    betas = cosine_betas()
    assert float(betas.max()) == 0.999  # the cap binds at the last step
    # unclipped, the product telescopes: alphas_cumprod[n] = abar((n + 1)/N) / abar(0)
    abar = torch.cumprod(1 - betas, 0)
    u = torch.arange(1, 1001, dtype=F64) / 1000
    closed = _abar(u) / _abar(torch.zeros(1, dtype=F64))
    assert float(((abar - closed) / closed)[:-1].abs().max()) < 1e-12


def test_the_discrete_cosine_table_lies_on_the_continuous_cosine_sde():
    discrete, cosine = DiscreteVPSDE.cosine(), CosineVPSDE()
    t = discrete.time_of(torch.arange(990))  # up to t = 0.99 < T = 0.9946 of the continuous one
    assert float((discrete.alpha(t) - cosine.alpha(t)).abs().max()) < 1e-12
    lam = cosine.log_snr(t)
    assert float((cosine.t_from_log_snr(lam) - t).abs().max()) < 1e-12
    assert float(cosine.sigma(torch.tensor([cosine.T], dtype=F64))) > 0.9999


@pytest.mark.parametrize("sde", [DiscreteVPSDE.linear(), DiscreteVPSDE.cosine(), CosineVPSDE()],
                         ids=["linear", "discrete-cosine", "cosine"])
def test_drift_and_diffusion_transport_gaussian_marginals(sde):
    """For data N(0, s² I) the probability-flow ODE is dx/dt = c(t) x with c = d log v_t / dt, v_t² = alpha² s² +
    sigma² (Fokker-Planck), inside each segment of a piecewise schedule."""
    s2 = 0.49
    t = (torch.arange(50, 950, 45, dtype=F64) + 0.5) / 1000  # mid-segment: away from the grid times
    v2 = lambda t: sde.alpha(t) ** 2 * s2 + sde.sigma(t) ** 2  # noqa: E731
    h = 1e-7
    dlogv_dt = 0.25 * (torch.log(v2(t + h)) - torch.log(v2(t - h))) / h
    x = torch.ones(len(t), 2, dtype=F64)
    c = sde.probability_flow(lambda x, t: -x / append_dims(v2(t), x.ndim)).drift(x, t)[:, 0]
    assert torch.allclose(c, dlogv_dt, rtol=1e-6, atol=1e-7)
    # and d log alpha / dt = f, the VP relation g² = -2 f
    dlog_alpha = (torch.log(sde.alpha(t + h)) - torch.log(sde.alpha(t - h))) / (2 * h)
    f = sde.drift(x, t)[:, 0]
    assert torch.allclose(f, dlog_alpha, rtol=1e-6) and torch.allclose(sde.diffusion(t) ** 2, -2 * f, rtol=1e-12)


def test_networks_of_discrete_models_see_the_timestep():
    sde = DiscreteVPSDE.linear()
    seen = []

    class Net(torch.nn.Module):
        def forward(self, x, c_noise):
            seen.append(c_noise)
            return torch.zeros_like(x)

    model = ScoreModel(Net(), sde)  # time_input "auto": the schedule's "timestep"
    model(torch.zeros(3, 2, dtype=F64), sde.time_of(torch.tensor([0, 499, 999])))
    assert torch.allclose(seen[0], torch.tensor([0.0, 499.0, 999.0], dtype=F64), atol=1e-9)
    with pytest.raises(ValueError, match="needs a discrete schedule"):
        ScoreModel(Net(), CosineVPSDE(), time_input="timestep")(torch.zeros(1, 2), torch.full((1,), 0.5))


@pytest.mark.parametrize(("betas", "match"), [([0.1], "at least 2"), ([0.1, 1.2], "in \\(0, 1\\)"),
                                              ([0.0, 0.1], "in \\(0, 1\\)"), ([0.1, float("nan")], "in \\(0, 1\\)")])
def test_bad_tables_are_explained(betas, match):
    with pytest.raises(ValueError, match=match):
        DiscreteVPSDE(betas)


def test_diffusers_spacings_land_on_the_timesteps_and_refuse_continuous_schedules():
    from scoresde import VPSDE
    from scoresde.solvers import get_timesteps

    sde = DiscreteVPSDE.linear()
    n_of = lambda ts: torch.round(sde.timestep_of(ts)).long().tolist()  # noqa: E731
    lead = get_timesteps("leading", sde, sde.sampling_eps, 10)
    assert n_of(lead) == list(range(900, -1, -100))  # ends on timestep 0: 10 timesteps, 9 steps
    trail = get_timesteps("trailing", sde, sde.sampling_eps, 10)
    assert n_of(trail) == [*range(999, 0, -100), 0]  # 999 … 99, then timestep 0 = t_end
    assert torch.allclose(sde.timestep_of(trail[:-1]), torch.round(sde.timestep_of(trail[:-1])), atol=1e-9)
    assert n_of(get_timesteps("linspace", sde, sde.sampling_eps, 4)) == [999, 666, 333, 0]
    with pytest.raises(ValueError, match="spaces the timesteps of a discrete schedule"):
        get_timesteps("trailing", VPSDE(), 1e-3, 10)
    with pytest.raises(ValueError, match="1001 steps on a schedule of 1000 timesteps"):
        get_timesteps("leading", sde, sde.sampling_eps, 1001)
    with pytest.raises(ValueError, match="on discrete schedules also: leading, trailing, linspace"):
        get_timesteps("spaced", sde, sde.sampling_eps, 10)
