"""SMC-Diff against the exact conditional of Gaussian mixtures given observed coordinates: the component that
replacement misses, distances to the exact conditional that fall with the particles, and the particle machinery
(systematic resampling, the kernel density, per-seed reproducibility)."""

import math

import pytest
import torch

from scoresde import VPSDE, GaussianMixture
from scoresde.inverse import (
    GrayObservation,
    MaskObservation,
    inpaint,
    observed_log_density,
    smc,
    systematic_resample,
)
from scoresde.metrics import frechet_gaussian, mode_mass_error

SDE = VPSDE()


def _two_modes():
    # means (-2, -1) and (2, 1), sd 0.4; x_2 = 0.6 observed: P(component 2 | y) = 0.9994 (DESIGN.md §7)
    gm = GaussianMixture([1, 1], [[-2.0, -1.0], [2.0, 1.0]], [0.16, 0.16])
    mask = torch.tensor([0.0, 1.0])
    return gm, mask


def _share_right(x):
    return float((x[:, 0] > 0).double().mean())


def test_the_exact_posterior_of_the_two_mode_problem():
    gm, mask = _two_modes()
    cond, _ = gm.condition(mask.bool(), torch.tensor([0.6], dtype=torch.float64))
    assert abs(float(cond.weights[1]) - 0.9994) < 1e-4


def test_smc_finds_the_component_replacement_misses():
    gm, mask = _two_modes()
    score = gm.score_fn(SDE)
    y = torch.tensor([0.0, 0.6]).expand(1000, 2).clone()
    opts = {"steps": 100, "dtype": torch.float64}
    rep = inpaint(score, SDE, y, mask, generator=torch.Generator().manual_seed(0), **opts)
    one = smc(score, SDE, y, mask, particles=1, generator=torch.Generator().manual_seed(0), **opts)
    k64 = smc(score, SDE, y, mask, particles=64, generator=torch.Generator().manual_seed(1), **opts)
    k256 = smc(score, SDE, y[:400], mask, particles=256, generator=torch.Generator().manual_seed(2), **opts)
    # measured: replacement 0.61, K = 1 0.60 (20,000 draws each), 64 particles 0.9995, 256 particles 1.0
    assert 0.5 < _share_right(rep.x) < 0.72 and 0.5 < _share_right(one.x) < 0.72
    assert _share_right(k64.x) >= 0.97 and _share_right(k256.x) >= 0.99
    assert int(one.resampled.sum()) == 0 and int(k64.resampled.sum()) > 0  # one particle never resamples
    assert one.nfe == k64.nfe == 100  # one call per step, on B x K rows
    for r in (one, k64, k256):
        assert torch.isfinite(r.x).all() and torch.isfinite(r.log_weights).all()
        assert torch.allclose(r.log_weights.logsumexp(1), torch.zeros(len(r.x), dtype=torch.float64), atol=1e-9)
        assert torch.equal(r.x[:, 1], y[: len(r.x), 1].double())  # the observed part is the observation


@pytest.mark.parametrize(("solver", "steps"), [("reverse_diffusion", 100), ("ancestral", 500)])
def test_smc_weights_every_gaussian_step(solver, steps):
    # The weights are those of a discretised kernel: at 100 steps ancestral's put 0.84 of their mass on the right
    # component (Euler-Maruyama's 0.9993), at 500 steps 1.0 (benchmarks/smc.py tabulates steps and solvers).
    gm, mask = _two_modes()
    y = torch.tensor([0.0, 0.6]).expand(300, 2).clone()
    r = smc(gm.score_fn(SDE), SDE, y, mask, particles=64, solver=solver, steps=steps,
            generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert _share_right(r.x) >= 0.97, (solver, _share_right(r.x))


def _four_modes():
    # 8-D: four components that differ little in the 4 observed coordinates and much in the 4 hidden ones, so the
    # observation reweights them (prior 1/4 each; exact conditional 0.505, 0.362, 0.133, 0.001)
    g = torch.Generator().manual_seed(0)
    observed = torch.tensor([[0.0, 0, 0, 0], [0.6, 0, 0, 0], [0, 0.6, 0, 0], [-0.6, -0.6, 0, 0]], dtype=torch.float64)
    means = torch.cat([observed, 2.0 * torch.randn(4, 4, generator=g, dtype=torch.float64)], 1)
    gm = GaussianMixture(torch.ones(4), means, torch.full((4,), 0.09))
    v = torch.tensor([0.25, 0.1, 0.0, 0.0], dtype=torch.float64)
    mask = torch.cat([torch.ones(4), torch.zeros(4)])
    cond, _ = gm.condition(mask.bool(), v)
    return gm, mask, torch.cat([v, torch.zeros(4, dtype=torch.float64)]).float(), cond


def test_distances_to_the_exact_conditional_fall_with_the_particles():
    gm, mask, x0, cond = _four_modes()
    n = 600
    y = x0.expand(n, 8).clone()
    ref = cond.sample(n, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    floor = frechet_gaussian(ref, cond.mean, cond.cov)
    fd, tv = [], []
    for K in (1, 4, 16):
        r = smc(gm.score_fn(SDE), SDE, y, mask, particles=K, steps=100, generator=torch.Generator().manual_seed(K),
                dtype=torch.float64)
        fd.append(frechet_gaussian(r.x[:, 4:], cond.mean, cond.cov))
        tv.append(mode_mass_error(r.x[:, 4:], cond))
    # measured (1000 observations): K = 1 FD 4.98, TV 0.34; K = 4 0.36, 0.078; K = 16 0.011, 0.018; floor 0.008
    assert fd[0] > 2.0 and tv[0] > 0.25, (fd, tv)
    assert fd[0] > 5 * fd[1] > 5 * 3 * fd[2] and tv[0] > tv[1] > tv[2], (fd, tv)
    assert fd[2] < 4 * floor + 0.01 and tv[2] < 0.05, (fd, tv, floor)


def test_completions_depend_on_their_own_seed_only():
    gm, mask = _two_modes()
    y = torch.tensor([[0.0, 0.6], [0.0, -0.3], [0.0, 1.2]])
    seeds = torch.tensor([11, 22, 33])
    opts = {"particles": 8, "steps": 20}
    batch = smc(gm.score_fn(SDE), SDE, y, mask, seeds=seeds, **opts)
    alone = smc(gm.score_fn(SDE), SDE, y[1:2], mask, seeds=seeds[1:2], **opts)
    assert torch.equal(batch.particles[1], alone.particles[0]) and torch.equal(batch.x[1], alone.x[0])
    again = smc(gm.score_fn(SDE), SDE, y, mask, seeds=seeds, **opts)
    assert torch.equal(again.x, batch.x)
    other = smc(gm.score_fn(SDE), SDE, y, mask, seeds=seeds + 1, **opts)
    assert not torch.equal(other.x, batch.x)


def test_systematic_resampling_copies_each_particle_floor_or_ceil_of_k_w_times():
    g = torch.Generator().manual_seed(0)
    w = torch.rand(50, 7, generator=g, dtype=torch.float64)
    w = w / w.sum(1, keepdim=True)
    idx = systematic_resample(w.log(), torch.rand(50, generator=g, dtype=torch.float64))
    counts = torch.zeros(50, 7, dtype=torch.float64).scatter_add_(1, idx, torch.ones(50, 7, dtype=torch.float64))
    assert bool(((counts >= (7 * w).floor()) & (counts <= (7 * w).ceil())).all())
    # the expected copies are K w: averaged over many draws of u
    u = torch.rand(20000, generator=g, dtype=torch.float64)
    idx = systematic_resample(w[:1].log().expand(20000, 7), u)
    share = torch.bincount(idx.flatten(), minlength=7).double() / idx.numel()
    assert torch.allclose(share, w[0], atol=3e-3)


def test_the_kernel_density_of_the_observed_part():
    g = torch.Generator().manual_seed(1)
    v, m = torch.randn(3, 1, 2, 2, generator=g), torch.randn(3, 1, 2, 2, generator=g)
    mask = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    obs = MaskObservation(mask)
    std = torch.rand(3, 1, 2, 2, generator=g) + 0.5
    ref = torch.distributions.Normal(m, std).log_prob(v).double()
    expected = (ref * mask).flatten(1).sum(1) + 3 * 0.5 * math.log(2 * math.pi)  # the shared constant is dropped
    assert torch.allclose(observed_log_density(obs, v, m, std), expected, atol=1e-5)
    assert torch.allclose(observed_log_density(obs, v, m, 0.7),
                          (torch.distributions.Normal(m, 0.7).log_prob(v).double() * mask).flatten(1).sum(1)
                          + 3 * (math.log(0.7) + 0.5 * math.log(2 * math.pi)), atol=1e-5)
    # an orthogonal projection: the grey value of 3 channels, one direction per pixel
    x, mu = torch.randn(2, 3, 1, 1, generator=g), torch.randn(2, 3, 1, 1, generator=g)
    gray = (x - mu).flatten(1).sum(1) / 3**0.5
    assert torch.allclose(observed_log_density(GrayObservation(), x, mu, 0.5), (-0.5 * gray**2 / 0.25).double(),
                          atol=1e-5)
    with pytest.raises(ValueError, match="MaskObservation"):
        observed_log_density(GrayObservation(), x, mu, torch.ones_like(x))


def test_smc_refuses_bad_input():
    gm, mask = _two_modes()
    y, score = torch.zeros(4, 2), gm.score_fn(SDE)
    with pytest.raises(ValueError, match="integer >= 1"):
        smc(score, SDE, y, mask, particles=0)
    with pytest.raises(ValueError, match="ess_threshold"):
        smc(score, SDE, y, mask, ess_threshold=1.5)
    with pytest.raises(ValueError, match="Gaussian step.*euler_maruyama"):
        smc(score, SDE, y, mask, solver="ddim", steps=5)
    with pytest.raises(ValueError, match="particles apply to method 'smc'"):
        inpaint(score, SDE, y, mask, particles=4)
    with pytest.raises(ValueError, match="one step per time step"):
        inpaint(score, SDE, y, mask, method="smc", resample=3)
    r = inpaint(score, SDE, y, mask, method="smc", particles=3, steps=4, generator=torch.Generator().manual_seed(0))
    assert r.particles.shape == (4, 3, 2)
