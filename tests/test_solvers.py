"""The solver registry and Euler–Maruyama against exact answers, with the analytic score as the network."""

from dataclasses import dataclass
from statistics import median

import pytest
import torch

import scoresde.solvers as solvers
from scoresde import VESDE, VPSDE, GaussianMixture, SubVPSDE, sample
from scoresde.metrics import frechet_gaussian, mode_mass_error
from scoresde.solvers import EulerMaruyama, Solver, SolverSDEIncompatible, State, get_solver, register_solver

N = 4000
MIX64 = GaussianMixture.random(64, k=3, shape=(1, 8, 8), seed=0)  # eigenvalues over three decades
CASES = {
    "ring-vp": (GaussianMixture.ring(), VPSDE()),
    "ring-subvp": (GaussianMixture.ring(), SubVPSDE()),
    "ring-ve": (GaussianMixture.ring(), VESDE(sigma_max=5.0)),
    "img64-vp": (MIX64, VPSDE()),
    "img64-subvp": (MIX64, SubVPSDE()),
    # sigma_max = the largest pairwise distance (≈ 23) leaves a prior mismatch at T that biases mode weights
    # (Fréchet ≈ 10× the floor even from a perfect solver); 100 makes it negligible.
    "img64-ve": (MIX64, VESDE(sigma_max=100.0)),
}


def _floors(gm, n=N, reps=5):
    exact = [gm.sample(n, generator=torch.Generator().manual_seed(100 + s)) for s in range(reps)]
    return median(frechet_gaussian(x, gm.mean, gm.cov) for x in exact), median(mode_mass_error(x, gm) for x in exact)


@pytest.mark.parametrize("case", list(CASES))
def test_euler_maruyama_reaches_the_noise_floor(case):
    gm, sde = CASES[case]
    res = sample(gm.score_fn(sde), sde, (N, *gm.shape), steps=200, generator=torch.Generator().manual_seed(0))
    assert res.x.shape == (N, *gm.shape) and res.nfe == 200
    fd_floor, mm_floor = _floors(gm)
    fd, mm = frechet_gaussian(res.x, gm.mean, gm.cov), mode_mass_error(res.x, gm)
    assert fd < 3 * fd_floor, (fd, fd_floor)
    assert mm < 3 * mm_floor + 0.01, (mm, mm_floor)


def test_euler_maruyama_error_shrinks_with_steps():
    gm, sde = CASES["img64-vp"]
    fd = {
        steps: frechet_gaussian(
            sample(gm.score_fn(sde), sde, (N, 1, 8, 8), steps=steps, generator=torch.Generator().manual_seed(0)).x, gm.mean, gm.cov
        )
        for steps in (5, 20, 200)
    }
    assert fd[5] > 3 * fd[20] > 3 * fd[200] * 0.3, fd
    assert fd[5] > 20 * fd[200], fd


def test_same_generator_same_samples_and_counted_nfe(ring):
    sde, f = VPSDE(), ring.score_fn(VPSDE())
    a = sample(f, sde, (64, 2), steps=30, generator=torch.Generator().manual_seed(7))
    b = sample(f, sde, (64, 2), steps=30, generator=torch.Generator().manual_seed(7))
    c = sample(f, sde, (64, 2), steps=30, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a.x, b.x) and not torch.allclose(a.x, c.x)
    assert a.nfe == 30


def test_denoise_is_tweedie_with_one_more_evaluation(ring):
    sde = VPSDE()
    f = ring.score_fn(sde)
    plain = sample(f, sde, (256, 2), steps=50, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    den = sample(f, sde, (256, 2), steps=50, generator=torch.Generator().manual_seed(1), dtype=torch.float64, denoise=True)
    t = torch.full((256,), sde.sampling_eps, dtype=torch.float64)
    assert den.nfe == plain.nfe + 1
    assert torch.allclose(den.x, ring.denoise(plain.x, t, sde), rtol=1e-10, atol=1e-12)


def test_trajectory_callback_and_x_init(ring):
    sde = VESDE(sigma_max=5.0)
    f = ring.score_fn(sde)
    seen = []
    x_T = sde.prior_sample((32, 2), generator=torch.Generator().manual_seed(3))
    res = sample(f, sde, (32, 2), steps=10, x_init=x_T, return_trajectory=True, callback=lambda i, t, s: seen.append((i, t)),
                 generator=torch.Generator().manual_seed(4))
    assert len(res.trajectory) == 11 and torch.equal(res.trajectory[0], x_T) and torch.equal(res.trajectory[-1], res.x)
    assert [i for i, _ in seen] == list(range(10)) and seen[-1][1] == pytest.approx(sde.sampling_eps)
    times = [t for _, t in seen]
    assert times == sorted(times, reverse=True)


def test_unknown_names_and_options_are_explained(ring):
    f, sde = ring.score_fn(VPSDE()), VPSDE()
    with pytest.raises(ValueError, match=r"unknown solver 'heun_typo'; available: .*euler_maruyama"):
        sample(f, sde, (4, 2), solver="heun_typo")
    with pytest.raises(ValueError, match="valid options: \\(none\\)"):
        get_solver("euler_maruyama", snr=0.16)
    with pytest.raises(ValueError, match="set them on the instance"):
        get_solver(EulerMaruyama(), snr=0.16)
    with pytest.raises(ValueError, match=r"shape must be \(B, \*D\)"):
        sample(f, sde, (4,))
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        sample(f, sde, (4, 2), steps=0)
    with pytest.raises(ValueError, match="0 < t_end < T"):
        sample(f, sde, (4, 2), t_end=1.5)
    with pytest.raises(ValueError, match="x_init has shape"):
        sample(f, sde, (4, 2), x_init=torch.zeros(4, 3))
    with pytest.raises(ValueError, match="must return a tensor shaped like x"):
        sample(lambda x, t: x[:, :1], sde, (4, 2), steps=2)


def test_incompatible_solver_is_named():
    @dataclass
    class NeedsAncestral(EulerMaruyama):
        requires = ("ancestral_step",)

    with pytest.raises(SolverSDEIncompatible, match="NeedsAncestral needs the SDE to provide ancestral_step, which VPSDE"):
        sample(lambda x, t: -x, VPSDE(), (4, 2), solver=NeedsAncestral())


def test_a_user_solver_is_one_class_and_one_entry(monkeypatch, ring):
    monkeypatch.setattr(solvers, "SOLVERS", dict(solvers.SOLVERS))

    @dataclass
    class ODEEuler(Solver):
        """Euler on the probability-flow ODE (deterministic)."""

        order = 1.0
        stochastic = False
        nfe_per_step = 1

        def step(self, score_fn, sde, state, t, t_next, noise, last):
            dt = (t_next - t).to(state.x.dtype)[:, None]
            return State(state.x + sde.probability_flow(score_fn).drift(state.x, t) * dt)

    register_solver("ode_euler", ODEEuler)
    with pytest.raises(ValueError, match="already registered"):
        register_solver("ode_euler", ODEEuler)
    with pytest.raises(TypeError, match="Solver subclass"):
        register_solver("bad", object)
    sde = VPSDE()
    res = sample(ring.score_fn(sde), sde, (N, 2), solver="ode_euler", steps=200, generator=torch.Generator().manual_seed(0))
    assert frechet_gaussian(res.x, ring.mean, ring.cov) < 3 * _floors(ring)[0]
