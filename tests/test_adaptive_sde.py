"""The adaptive reverse-SDE solver ("Gotta Go Fast") and the per-sample Brownian path behind it, against exact
answers: Brownian covariances under any query order, the exact marginal of a Gaussian target at every tolerance's
end, the bias that fresh noise after a rejection brings (so the check can fail), exact landing on the times asked
for, and per-sample step control."""

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, GaussianMixture, sample
from scoresde.noise import PerSampleBrownian, derive_seeds, splitmix64
from scoresde.solvers import AdaptiveReverseSDE

D = 16
GAUSS = GaussianMixture(torch.ones(1), torch.zeros(1, D), (4 * torch.eye(D))[None])  # N(0, 4 I): p_t is exact


def _exact_std(sde, t):
    tt = torch.tensor([t], dtype=torch.float64)
    return float((4 * sde.alpha(tt) ** 2 + sde.sigma(tt) ** 2).sqrt())


def _gauss_run(sde, solver, n=4000, seed=0, **kw):
    """Samples of N(0, 4 I) from the exact p_T (so the prior's mismatch is not measured) and the exact end std."""
    g = torch.Generator().manual_seed(seed)
    x_T = _exact_std(sde, sde.T) * torch.randn(n, D, generator=g, dtype=torch.float64)
    res = sample(GAUSS.score_fn(sde), sde, (n, D), solver=solver, steps=1, x_init=x_T,
                 seeds=derive_seeds(seed, 0, n), dtype=torch.float64, **kw)
    return res, _exact_std(sde, sde.sampling_eps)


# ---- the Brownian path ----------------------------------------------------------------------------------------


def test_brownian_path_has_brownian_covariances_whatever_the_query_order():
    """Query as a rejecting solver does (far, then nearer, then between), then check Cov(W(s), W(u)) = min(s, u)
    to 5 standard errors, and that a repeated query returns the same numbers."""
    B, s = 40000, [0.7, 0.2, 0.45, 0.9, 0.05]
    path = PerSampleBrownian(splitmix64(derive_seeds(1, 0, B)), 1.0, 2, tol=1e-7)
    rows = torch.arange(B)
    w = [path(torch.full((B,), si, dtype=torch.float64), rows) for si in s]
    for i in range(len(s)):
        for j in range(i, len(s)):
            cov = (w[i] * w[j]).mean(0)
            se = math.sqrt((s[i] * s[j] + min(s[i], s[j]) ** 2) / B)
            assert torch.all((cov - min(s[i], s[j])).abs() < 5 * se), (s[i], s[j], cov)
    assert torch.equal(path(torch.full((B,), s[0], dtype=torch.float64), rows), w[0])


def test_brownian_path_of_a_sample_does_not_depend_on_the_rows_queried_with_it():
    keys = splitmix64(derive_seeds(2, 0, 10))
    path = PerSampleBrownian(keys, 2.0, 5)
    t = torch.linspace(0.1, 1.9, 10, dtype=torch.float64)
    full = path(t, torch.arange(10))
    assert torch.equal(path(t[[7, 3]], torch.tensor([7, 3])), full[[7, 3]])
    alone = PerSampleBrownian(keys[3:4], 2.0, 5)
    assert torch.equal(alone(t[3:4], torch.tensor([0])), full[3:4])


def test_brownian_path_refuses_a_bad_interval():
    with pytest.raises(ValueError, match="span and tol must be positive"):
        PerSampleBrownian(torch.zeros(2, dtype=torch.int64), 0.0, 3)


# ---- the solver -------------------------------------------------------------------------------------------------


class _FreshNoise(AdaptiveReverseSDE):
    """The paper's handling of a rejection: a retried step draws a new increment instead of the bridge value."""

    @staticmethod
    def _brownian_at(path, s, rows, w_now, s_now):
        return w_now + (s - s_now).sqrt()[:, None] * torch.randn_like(w_now)


@pytest.mark.parametrize("sde", [VPSDE(), VESDE(sigma_max=5.0)], ids=["vp", "ve"])
def test_the_end_marginal_converges_as_the_tolerance_tightens(sde):
    """N(0, 4 I) from the exact p_T: the std at t_end is exact to 1% at rtol 0.01 (standard error 0.3%), and the
    error at rtol 0.5 (measured 4.5-9.4%) is at least three times larger."""
    loose, exact = _gauss_run(sde, AdaptiveReverseSDE(rtol=0.5, atol=0.5 / 6))
    tight, _ = _gauss_run(sde, AdaptiveReverseSDE(rtol=0.01, atol=0.01 / 6))
    err_loose, err_tight = abs(float(loose.x.std()) / exact - 1), abs(float(tight.x.std()) / exact - 1)
    assert err_tight < 0.01, err_tight
    assert err_loose > 3 * err_tight, (err_loose, err_tight)
    assert tight.nfe > 5 * loose.nfe


def test_fresh_noise_after_a_rejection_biases_the_variance_and_the_bridge_does_not():
    """At rtol 0.01 under VP, redrawing the increment of a retried step inflates the std by 3.3-4.1% (13σ); the
    Brownian bridge keeps it within 1%."""
    sde = VPSDE()
    fresh, exact = _gauss_run(sde, _FreshNoise(rtol=0.01, atol=0.01 / 6))
    bridge, _ = _gauss_run(sde, AdaptiveReverseSDE(rtol=0.01, atol=0.01 / 6))
    assert float(fresh.x.std()) / exact - 1 > 0.025
    assert abs(float(bridge.x.std()) / exact - 1) < 0.01


def test_every_time_asked_for_is_landed_on_with_its_exact_marginal():
    """With a 4-step grid and a trajectory, each state is the sample at exactly that grid time: its std matches the
    exact marginal std there to 2%."""
    sde = VPSDE()
    g = torch.Generator().manual_seed(3)
    x_T = _exact_std(sde, 1.0) * torch.randn(4000, D, generator=g, dtype=torch.float64)
    res = sample(GAUSS.score_fn(sde), sde, (4000, D), solver="adaptive_sde", rtol=0.02, atol=0.003, steps=4,
                 x_init=x_T, seeds=derive_seeds(3, 0, 4000), dtype=torch.float64, return_trajectory=True)
    times = torch.linspace(1.0, sde.sampling_eps, 5, dtype=torch.float64)
    assert len(res.trajectory) == 5
    for t, x in zip(times.tolist(), res.trajectory):
        assert abs(float(x.std()) / _exact_std(sde, t) - 1) < 0.02, t


def test_each_sample_takes_its_own_steps():
    """A sample's path does not depend on its batch: alone, it is what it was among 64 others (its step sizes are
    its own); and every score call sees the whole batch, as a score holding per-sample labels needs."""
    sde = VESDE(sigma_max=5.0)
    sizes = []

    def score(x, t):
        sizes.append(x.shape[0])
        return GAUSS.score_fn(sde)(x, t)

    kw = dict(solver="adaptive_sde", steps=1, dtype=torch.float64)
    batch = sample(score, sde, (64, D), seeds=derive_seeds(5, 0, 64), **kw).x
    assert set(sizes) == {64}
    one = sample(score, sde, (1, D), seeds=derive_seeds(5, 17, 1), **kw).x
    assert torch.allclose(one, batch[17:18], rtol=1e-10, atol=1e-10)


def test_too_few_attempts_end_in_one_clear_error():
    with pytest.raises(RuntimeError, match="adaptive_sde took 5 attempts without reaching t = 0.001"):
        sample(GAUSS.score_fn(VPSDE()), VPSDE(), (8, D), solver="adaptive_sde", steps=1, max_attempts=5,
               seeds=derive_seeds(0, 0, 8))
