"""Analytic-DPM's optimal reverse variance (``scoresde.variances``, ``ancestral`` with ``variance="analytic"``) against
exact answers: for isotropic Gaussian data ``Gamma(t) = alpha² s²/(alpha² s² + sigma²)`` and the reverse kernel is
exactly Gaussian, so ancestral sampling with the optimal variance is exact at every step count."""

import math

import pytest
import torch

from scoresde import VPSDE, GaussianMixture, sample
from scoresde.metrics import frechet_gaussian
from scoresde.solvers import get_solver
from scoresde.solvers.sde import Ancestral
from scoresde.variances import EpsNormTable, analytic_variance, eps_norm_table

F64 = torch.float64
S2, D = 0.5, 16


def _iso():
    return GaussianMixture(torch.ones(1), torch.zeros(1, D), torch.full((1,), S2))


def _diffused(mix, sde, t):
    tt = torch.tensor([t], dtype=F64)
    a, s = float(sde.alpha(tt)[0]), float(sde.sigma(tt)[0])
    return a * mix.mean, a * a * mix.cov + s * s * torch.eye(mix.dim, dtype=F64)


def test_the_table_matches_the_gaussian_closed_form():
    """Every one of the 64 estimates (2,000 points each) lies within 4.5 standard errors of ``alpha² s²/(alpha² s² +
    sigma²)``, and the standardized errors have unit spread; the table survives its checkpoint form."""
    sde, mix = VPSDE(), _iso()
    x = mix.sample(2000, generator=torch.Generator().manual_seed(0), dtype=F64)
    tab = eps_norm_table(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1))
    t = sde.t_from_log_snr(tab.lam)
    a2, s2 = sde.alpha(t) ** 2, sde.sigma(t) ** 2
    exact = a2 * S2 / (a2 * S2 + s2)
    z = (tab.gamma - exact) / tab.stderr.clamp_min(1e-300)
    assert float(z.abs().max()) < 4.5 and 0.7 < float(z.std()) < 1.3, z
    again = EpsNormTable.from_state(tab.state())
    assert torch.equal(again.gamma, tab.gamma) and again.at(0.3) == tab.at(0.3)
    lam = float(tab.lam[10] * 0.3 + tab.lam[11] * 0.7)
    assert abs(tab.at(lam) - float(0.3 * tab.gamma[10] + 0.7 * tab.gamma[11])) < 1e-15


def test_analytic_variance_spans_theorem_2s_bounds():
    """``Gamma = 0`` gives DDPM's ``beta~`` and ``Gamma = 1`` Theorem 2's upper bound ``lam² + (sqrt(beta̅_n/alpha_n)
    - sqrt(beta̅_{n-1} - lam²))²``, both written in DDPM's discrete notation."""
    sde = VPSDE()
    ts = torch.tensor([0.6, 0.5], dtype=F64)
    (at, as_), (st, ss) = sde.alpha(ts).tolist(), sde.sigma(ts).tolist()
    alpha_n, bbar_n, bbar_prev = (at / as_) ** 2, st**2, ss**2  # per-step alpha_n, 1 - abar_n, 1 - abar_{n-1}
    beta_tilde = bbar_prev / bbar_n * (1 - alpha_n)
    upper = beta_tilde + (math.sqrt(bbar_n / alpha_n) - math.sqrt(bbar_prev - beta_tilde)) ** 2
    lam = torch.tensor([-5.0, 5.0], dtype=F64)
    for gamma, want in ((0.0, beta_tilde), (1.0, upper)):
        tab = EpsNormTable(lam, torch.full((2,), gamma, dtype=F64), torch.zeros(2, dtype=F64), 1)
        assert abs(analytic_variance(tab, at, st, 0.0, as_, ss, beta_tilde) - want) < 1e-12 * want


def test_ancestral_sampling_with_the_optimal_variance_is_exact_on_gaussian_data():
    """Exact score, 10 uniform steps: after the next-to-last step the analytic-variance samples' Fréchet distance to
    the exact marginal is within 2× that of exact samples, while ``beta~`` and ``beta`` are 10× and more above it."""
    sde, mix = VPSDE(), _iso()
    x = mix.sample(2000, generator=torch.Generator().manual_seed(0), dtype=F64)
    tab = eps_norm_table(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1))
    n = 20000
    fd = {}
    for v in ("posterior", "large", "analytic"):
        rec = {}

        def cb(i, t, state, rec=rec):
            if i == 8:
                rec["t"], rec["x"] = t, state.x.clone()

        sample(mix.score_fn(sde), sde, (n, D), solver=Ancestral(variance=v, table=tab), steps=10,
               generator=torch.Generator().manual_seed(2), dtype=F64, callback=cb)
        fd[v] = frechet_gaussian(rec["x"], *_diffused(mix, sde, rec["t"]))
    m, C = _diffused(mix, sde, rec["t"])
    exact = m + torch.randn(n, D, generator=torch.Generator().manual_seed(3), dtype=F64) @ torch.linalg.cholesky(C).T
    floor = frechet_gaussian(exact, m, C)
    assert fd["analytic"] < 2 * floor, (fd, floor)
    assert min(fd["posterior"], fd["large"]) > 10 * floor, (fd, floor)


def test_the_optimal_variance_beats_both_ddpm_variances_on_a_mixture():
    """16-D anisotropic 4-component mixture, exact score, log-SNR grid: at 10, 25 and 50 steps the analytic
    variance's Fréchet distance to the data (20,000 samples) is at least 8 % below the better of ``beta~`` and ``beta``
    (``benchmarks/variances.py`` has the full table)."""
    sde, mix = VPSDE(), GaussianMixture.random(16, k=4, cond=100.0, scale=0.5, seed=2)
    x = mix.sample(2000, generator=torch.Generator().manual_seed(0), dtype=F64)
    tab = eps_norm_table(mix.score_fn(sde), sde, x, generator=torch.Generator().manual_seed(1))
    for steps in (10, 25, 50):
        fd = {}
        for v in ("posterior", "large", "analytic"):
            out = sample(mix.score_fn(sde), sde, (20000, 16), solver=Ancestral(variance=v, table=tab), steps=steps,
                         grid="log_snr", generator=torch.Generator().manual_seed(2), dtype=F64)
            fd[v] = frechet_gaussian(out.x, mix.mean, mix.cov)
        assert fd["analytic"] < 0.92 * min(fd["posterior"], fd["large"]), (steps, fd)


def test_analytic_without_a_table_says_what_to_do():
    sde, mix = VPSDE(), GaussianMixture.ring()
    with pytest.raises(ValueError, match="needs the model's table"):
        sample(mix.score_fn(sde), sde, (4, 2), solver=get_solver("ancestral", variance="analytic"), steps=3,
               generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="'posterior', 'large', 'analytic' or 'learned'"):
        get_solver("ancestral", variance="optimal")


def test_scoresde_sample_estimates_the_table_once_per_checkpoint(toy_ckpt, tmp_path, capsys):
    """``scoresde sample --solver ancestral --variance analytic``: the first run estimates ``Gamma`` from the
    checkpoint's train split and keeps it beside the checkpoint (tied to its digest); it equals the table computed
    in Python from the same points; a second run reuses it and draws the same samples."""
    import numpy as np

    from scoresde.lightning.cli import run
    from scoresde.lightning.commands._common import load_data, load_model

    side = toy_ckpt.with_name(toy_ckpt.name + ".eps_norm.pt")
    side.unlink(missing_ok=True)
    args = ["sample", "--ckpt", str(toy_ckpt), "--solver", "ancestral", "--variance", "analytic", "--steps", "10",
            "--n", "32", "--progress", "false"]
    run([*args, "--out", str(tmp_path / "a")])
    assert "estimating Gamma" in capsys.readouterr().out and side.exists()
    stamp = side.stat().st_mtime_ns
    run([*args, "--out", str(tmp_path / "b")])
    assert "estimating Gamma" not in capsys.readouterr().out and side.stat().st_mtime_ns == stamp
    a, b = (np.load(tmp_path / d / "samples.npz")["samples"] for d in "ab")
    np.testing.assert_array_equal(a, b)
    model, dm = load_model(toy_ckpt), load_data(None, toy_ckpt)
    raw = dm.train_raw[:1000]
    x = dm.transform.forward_points(raw, torch.arange(len(raw)), 0)
    want = eps_norm_table(model.score_model, model.sde, x, generator=torch.Generator().manual_seed(0))
    got = EpsNormTable.from_state(torch.load(side, weights_only=True))
    assert torch.equal(got.gamma, want.gamma) and 0 < float(got.gamma.min()) and float(got.gamma.max()) <= 1
