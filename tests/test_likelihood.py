"""Likelihood, bits/dim and the ODE latent space, checked against the analytic mixture's exact densities.

The probability-flow likelihood returns ``log p_{t_eps}(x)`` with the prior ``N(0, I)`` standing in for ``p_T``. The
exact mixture gives both ``p_T`` (so the prior mismatch can be removed: ``prior=exact p_T``) and ``p_0``, so what
remains is the ODE solver's error and the ``t_eps`` cut-off, which must be below 1e-3 bits/dim.
"""

import math

import pytest
import torch

from scoresde import VESDE, VPSDE, GaussianMixture, SubVPSDE, bits_per_dim, decode, encode, fit_prior, log_likelihood
from scoresde.latent import interpolate, lerp, slerp
from scoresde.likelihood import GaussianPrior, cutoff_correction, data_moments, divergence, nats_to_bits_per_dim
from scoresde.noise import PerSampleNoise, derive_seeds
from scoresde.transforms import DataTransform

F64 = torch.float64
LN2 = math.log(2.0)


@pytest.fixture(scope="module")
def gm16():
    """16-D, four components, covariance eigenvalues over two decades."""
    return GaussianMixture.random(16, k=4, cond=100.0, scale=0.5, seed=2)


def _exact_pT(mix, sde):
    return lambda z: mix.log_prob(z, torch.full((z.shape[0],), sde.T, dtype=F64), sde)


def _bpd_error(mix, sde, x, res, reference_t=None):
    """Mean |bits/dim error| of ``integral + log p_T(z)`` (exact p_T) against exact ``log p_0`` (or ``p_t``)."""
    t = None if reference_t is None else torch.full((x.shape[0],), reference_t, dtype=F64)
    exact = mix.log_prob(x, t, sde if t is not None else None)
    corrected = res.integral + _exact_pT(mix, sde)(res.z)
    return float((corrected - exact).abs().mean()) / (x[0].numel() * LN2)


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE], ids=["vp", "subvp"])
@pytest.mark.parametrize("target", ["ring2d", "mix16d"])
def test_exact_trace_likelihood_matches_log_p0(sde_cls, target, ring, gm16):
    mix = ring if target == "ring2d" else gm16
    sde = sde_cls()
    x = mix.sample(48, generator=torch.Generator().manual_seed(0), dtype=F64)
    res = log_likelihood(mix.score_fn(sde), sde, x)
    assert _bpd_error(mix, sde, x, res) < 1e-3
    # The parts add up, the latent is a plausible prior draw, and the prior mismatch at T is what was corrected.
    torch.testing.assert_close(res.logp, res.prior + res.integral)
    assert res.z.shape == x.shape and 30 < res.nfe < 500
    mismatch = (res.prior - _exact_pT(mix, sde)(res.z)).abs().mean() / (x[0].numel() * LN2)
    # VP/sub-VP with beta_max = 20 leave alpha_T = 6.6e-3: pointwise the prior is off by about alpha_T mu_k·z nats.
    assert mismatch < 5e-3


def test_ve_likelihood_is_that_of_p_at_sigma_min(ring):
    """VE never reaches sigma = 0: its model density is p_0 convolved with N(0, sigma_min²), i.e. p_{t_eps}."""
    sde = VESDE(sigma_min=0.01, sigma_max=50.0)
    x = ring.sample(48, generator=torch.Generator().manual_seed(0), dtype=F64)
    res = log_likelihood(ring.score_fn(sde), sde, x)
    assert _bpd_error(ring, sde, x, res, reference_t=1e-5) < 1e-3
    assert _bpd_error(ring, sde, x, res) > 1e-3  # against p_0 the smoothing by sigma_min shows


def test_prior_mismatch_is_negligible_when_p_T_is_the_prior(ring):
    sde = VESDE(sigma_min=0.01, sigma_max=100.0)  # p_T = ring * N(0, 100²) ≈ N(0, 100² I)
    x = ring.sample(32, generator=torch.Generator().manual_seed(1), dtype=F64)
    res = log_likelihood(ring.score_fn(sde), sde, x)
    exact = ring.log_prob(x, torch.full((32,), 1e-5, dtype=F64), sde)
    assert float((res.logp - exact).abs().mean()) / (2 * LN2) < 1e-3


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_divergence_is_unbiased(probe, gm16):
    sde = VPSDE()
    x = gm16.sample(1, generator=torch.Generator().manual_seed(3), dtype=F64).requires_grad_(True)
    t = torch.full((1,), 0.05, dtype=F64)
    v = sde.probability_flow(gm16.score_fn(sde)).drift(x, t)
    exact = divergence(v, x)
    g = torch.Generator().manual_seed(4)
    eps = torch.randn(4000, 1, 16, generator=g, dtype=F64)
    if probe == "rademacher":
        eps = eps.sign()
    est = torch.stack([divergence(v, x, e[None]) for e in eps])[:, 0]
    se = est.std() / math.sqrt(len(est))
    assert abs(float(est.mean() - exact[0])) < 4 * float(se)
    assert float(se) > 1e-3 * abs(float(exact[0]))  # the estimator is noisy per probe: the check has teeth


def test_hutchinson_log_likelihood_is_unbiased_with_probes_fixed_per_solve(gm16):
    sde = VPSDE()
    x1 = gm16.sample(1, generator=torch.Generator().manual_seed(5), dtype=F64)
    x = x1.expand(256, 16).clone()  # one point, 256 independent probes (one per row, each fixed for its solve)
    exact = log_likelihood(gm16.score_fn(sde), sde, x1)
    hutch = log_likelihood(gm16.score_fn(sde), sde, x, trace="hutchinson", noise=PerSampleNoise(derive_seeds(0, 0, 256)))
    se = hutch.logp.std() / 16
    assert abs(float(hutch.logp.mean() - exact.logp[0])) < 4 * float(se)
    # A probe redrawn at every call would make the right-hand side noisy and the adaptive solver take far more steps.
    assert hutch.nfe < 1.5 * exact.nfe
    several = log_likelihood(gm16.score_fn(sde), sde, x[:64], trace="hutchinson", n_probes=4,
                             noise=PerSampleNoise(derive_seeds(1, 0, 64)))
    assert several.logp.std() < 0.75 * hutch.logp[:64].std()  # 4 probes halve the standard deviation


def test_hutchinson_reports_each_samples_standard_error(gm16):
    """With K probes each integrated on its own, ``integral_stderr`` is the estimate's spread: over 64 solves of one
    point (8 probes each) its RMS matches the spread of their ``logp`` to within sampling error, and over 64
    different points the exact ``log p`` lies within two of them in about the t-distribution's 91 %."""
    sde = VPSDE()
    x1 = gm16.sample(1, generator=torch.Generator().manual_seed(5), dtype=F64)
    rows = log_likelihood(gm16.score_fn(sde), sde, x1.expand(64, 16).clone(), trace="hutchinson", n_probes=8,
                          noise=PerSampleNoise(derive_seeds(2, 0, 64)))
    ratio = float(rows.integral_stderr.pow(2).mean().sqrt() / rows.logp.std())
    assert 0.75 < ratio < 1.3, ratio
    x = gm16.sample(64, generator=torch.Generator().manual_seed(7), dtype=F64)
    exact = log_likelihood(gm16.score_fn(sde), sde, x)
    hutch = log_likelihood(gm16.score_fn(sde), sde, x, trace="hutchinson", n_probes=8,
                           noise=PerSampleNoise(derive_seeds(3, 0, 64)))
    covered = float(((hutch.logp - exact.logp).abs() <= 2 * hutch.integral_stderr).double().mean())
    assert 0.75 <= covered < 1.0, covered
    assert exact.integral_stderr is None
    assert log_likelihood(gm16.score_fn(sde), sde, x[:4], trace="hutchinson").integral_stderr is None


def test_a_sample_is_as_accurate_alone_as_in_a_batch(gm16):
    sde = VPSDE()
    x = gm16.sample(32, generator=torch.Generator().manual_seed(6), dtype=F64)
    score = gm16.score_fn(sde)
    batch = log_likelihood(score, sde, x).logp
    alone = torch.cat([log_likelihood(score, sde, x[i : i + 1]).logp for i in (0, 7, 31)])
    exact = gm16.log_prob(x[[0, 7, 31]], torch.full((3,), 1e-5, dtype=F64), sde)
    nats_per_bpd = 16 * LN2
    # Alone or among 31 others, a sample's log-density agrees to a fifth of the 1e-3 bits/dim target ...
    assert float((alone - batch[[0, 7, 31]]).abs().max()) < 2e-4 * nats_per_bpd
    # ... and both are within the target of the exact density (plus the prior mismatch bounded above).
    assert float((alone - exact).abs().max()) < (5e-3 + 1e-3) * nats_per_bpd


@pytest.mark.parametrize("sde_cls", [VPSDE, pytest.param(SubVPSDE, marks=pytest.mark.slow)], ids=["vp", "subvp"])
def test_each_point_is_the_same_alone_and_in_batches_of_10_and_500(sde_cls, ring, gm16):
    """The default solver steps every sample on its own: 20 points solved one at a time, inside a batch of 10 (the
    first 10) and inside a batch of 500 agree to 1e-10 bits/dim, and their evaluations do not depend on the batch.
    With one step size for the batch (``backend="torchdiffeq"``) the same points move by up to ~1e-4."""
    sde = sde_cls()
    for mix in (ring, gm16):
        x = mix.sample(500, generator=torch.Generator().manual_seed(11), dtype=F64)
        score, D = mix.score_fn(sde), x[0].numel()
        big = log_likelihood(score, sde, x)
        ten = log_likelihood(score, sde, x[:10])
        alone = [log_likelihood(score, sde, x[i : i + 1]) for i in range(20)]
        bpd = lambda logp: logp / (D * LN2)  # noqa: E731
        lone = torch.cat([r.logp for r in alone])
        assert float((bpd(lone) - bpd(big.logp[:20])).abs().max()) <= 1e-10
        assert float((bpd(ten.logp) - bpd(big.logp[:10])).abs().max()) <= 1e-10
        assert torch.equal(torch.cat([r.nfe_per_sample for r in alone]), big.nfe_per_sample[:20])
    shared = log_likelihood(score, sde, x, backend="torchdiffeq").logp
    shared_alone = torch.cat([log_likelihood(score, sde, x[i : i + 1], backend="torchdiffeq").logp for i in range(20)])
    assert float((bpd(shared_alone) - bpd(shared[:20])).abs().max()) > 1e-7  # the batch-wide step moves them


def test_the_per_sample_and_torchdiffeq_backends_agree_to_the_tolerance(gm16):
    """Both backends solve the same ODE with the same error test. At rtol = atol = 1e-7, with the exact p_T, both
    reach the exact log p_{t_eps} to 3e-5 nats (measured: per-sample 2.6e-6, torchdiffeq 1.4e-5), and the per-sample
    solver needs fewer evaluations per sample (measured 211 against 332)."""
    sde = VPSDE()
    x = gm16.sample(64, generator=torch.Generator().manual_seed(12), dtype=F64)
    exact = gm16.log_prob(x, torch.full((64,), 1e-5, dtype=F64), sde)
    kw = dict(rtol=1e-7, atol=1e-7, prior=_exact_pT(gm16, sde))
    a = log_likelihood(gm16.score_fn(sde), sde, x, **kw)
    b = log_likelihood(gm16.score_fn(sde), sde, x, backend="torchdiffeq", **kw)
    assert float((a.logp - exact).abs().max()) < 3e-5 and float((b.logp - exact).abs().max()) < 3e-5
    assert a.nfe_per_sample is not None and b.nfe_per_sample is None
    assert float(a.nfe_per_sample.double().mean()) < b.nfe


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE], ids=["vp", "subvp"])
def test_the_fitted_prior_is_the_exact_p_T_of_gaussian_data(sde_cls):
    """Train points whose empirical mean and covariance are exactly (mu, S): fit_prior gives N(alpha_T mu,
    alpha_T² S + sigma_T² I), the exact diffused density of N(mu, S) data, to 1e-10 nats."""
    sde, D = sde_cls(), 5
    g = torch.Generator().manual_seed(3)
    mu, A = torch.randn(D, generator=g, dtype=F64), torch.randn(D, D, generator=g, dtype=F64)
    S = A @ A.T + 0.1 * torch.eye(D, dtype=F64)
    w = torch.randn(400, D, generator=g, dtype=F64)
    w = w - w.mean(0)
    w = torch.linalg.solve_triangular(torch.linalg.cholesky(torch.cov(w.T, correction=0)), w.T, upper=False).T
    train = mu + w @ torch.linalg.cholesky(S).T  # empirical moments exactly (mu, S)
    gauss = GaussianMixture(torch.ones(1), mu[None], S[None])
    z = torch.randn(50, D, generator=g, dtype=F64)
    exact = gauss.log_prob(z, torch.full((50,), sde.T, dtype=F64), sde)
    assert torch.allclose(fit_prior(sde, train)(z), exact, atol=1e-10, rtol=0)


def test_data_moments_accumulate_to_the_exact_mean_and_covariance():
    """Accumulated in chunks of 7 rows around a data point, the moments equal torch's to 1e-12; with no more points
    than dimensions (or above FULL_COVARIANCE_MAX_DIM) they are the variances, and the prior is diagonal: its density
    equals the product of the 1-D normals."""
    g = torch.Generator().manual_seed(8)
    x = 3.0 + torch.randn(40, 2, 3, generator=g, dtype=F64) * torch.linspace(0.5, 2.0, 6, dtype=F64).reshape(2, 3)
    m, c = data_moments(x, chunk=7)
    flat = x.flatten(1)
    assert torch.allclose(m, flat.mean(0), atol=1e-12) and torch.allclose(
        c, torch.cov(flat.T, correction=0), atol=1e-12
    )
    index = torch.arange(40, dtype=F64)[:, None, None]
    m2, c2 = data_moments(x, chunk=7, prepare=lambda rows, i: 2 * rows + i.to(F64)[:, None, None])  # chunk by chunk
    m3, c3 = data_moments(2 * x + index)
    assert torch.allclose(m2, m3, atol=1e-12) and torch.allclose(c2, c3, atol=1e-10)
    m, v = data_moments(x[:5])
    assert v.shape == (6,) and torch.allclose(v, flat[:5].var(0, correction=0), atol=1e-12)
    sde = VPSDE()
    T = torch.tensor([1.0], dtype=F64)
    a, s = float(sde.alpha(T)[0]), float(sde.sigma(T)[0])
    z = torch.randn(9, 2, 3, generator=g, dtype=F64)
    ref = torch.distributions.Normal(a * m, (a * a * v + s * s).sqrt()).log_prob(z.flatten(1)).sum(1)
    assert torch.allclose(fit_prior(sde, x[:5])(z), ref, atol=1e-12, rtol=0)
    state = fit_prior(sde, x).state()
    assert torch.equal(GaussianPrior.from_state(state)(z), fit_prior(sde, x)(z))


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE], ids=["vp", "subvp"])
def test_default_settings_with_the_fitted_prior_meet_1e_4_bits_per_dim(sde_cls, ring, gm16):
    """The issue's accuracy target with the exact score, default tolerances and the fitted prior: mean |bits/dim
    error| ≤ 1e-4 and worst sample ≤ 1e-3 (measured: ring 2.7e-5 / 2.1e-4, 16-D 5e-5 / 3.5e-4). On the 16-D mixture
    the N(0, I) prior alone is off by 1.9e-3 on average."""
    sde = sde_cls()
    for mix in (ring, gm16):
        train = mix.sample(50_000, generator=torch.Generator().manual_seed(1), dtype=F64)
        x = mix.sample(1000, generator=torch.Generator().manual_seed(2), dtype=F64)
        D = x[0].numel()
        res = log_likelihood(mix.score_fn(sde), sde, x, prior=fit_prior(sde, train))
        err = (res.logp - mix.log_prob(x)).abs() / (D * LN2)
        assert float(err.mean()) <= 1e-4 and float(err.max()) <= 1e-3, (float(err.mean()), float(err.max()))
        assert torch.equal(res.logp, res.prior + res.integral)  # the decomposition is kept
    plain = log_likelihood(gm16.score_fn(sde), sde, x)
    assert float(((plain.logp - gm16.log_prob(x)).abs() / (16 * LN2)).mean()) > 1e-3


@pytest.mark.parametrize("sde_cls", [VPSDE, SubVPSDE, VESDE], ids=["vp", "subvp", "ve"])
def test_the_taylor_cutoff_correction_recovers_log_p_0(sde_cls, ring, gm16):
    """``log p_0 - log p_eps`` in closed form (the mixture at both times) against :func:`cutoff_correction` with the
    exact score: the error falls as ``tau⁴`` (100× per decade of ``t_eps`` on VP; measured 2.3e-5 → 1e-9 bits/dim on
    the ring at 1e-5), and VE's ``sigma_min = 0.01`` floor (2.3e-3 bits/dim on the ring) drops to 1e-5. End to end,
    ``cutoff="taylor"`` makes ``logp`` the time-0 density and keeps the decomposition."""
    sde = sde_cls()
    for mix in (ring, gm16):
        x = mix.sample(300, generator=torch.Generator().manual_seed(2), dtype=F64)
        b = x.shape[1] * LN2
        errs = []
        for t_eps in (1e-4, 1e-5):
            true = mix.log_prob(x) - mix.log_prob(x, torch.full((300,), t_eps, dtype=F64), sde)
            fixed = true - cutoff_correction(mix.score_fn(sde), sde, x, t_eps)
            errs.append((float(true.abs().mean()) / b, float(fixed.abs().mean()) / b))
            assert errs[-1][1] < 0.05 * errs[-1][0], (t_eps, errs[-1])
        if sde_cls is not VESDE:  # tau² ∝ t_eps: ~100× less error per decade
            assert errs[1][1] < 0.05 * errs[0][1], errs
    x = ring.sample(200, generator=torch.Generator().manual_seed(3), dtype=F64)
    kw = dict(rtol=1e-8, atol=1e-8, prior=_exact_pT(ring, sde))
    plain = log_likelihood(ring.score_fn(sde), sde, x, **kw)
    fixed = log_likelihood(ring.score_fn(sde), sde, x, cutoff="taylor", **kw)
    assert plain.cutoff is None and torch.equal(fixed.logp, fixed.prior + fixed.integral + fixed.cutoff)
    err_plain = float((plain.logp - ring.log_prob(x)).abs().mean()) / (2 * LN2)
    err_fixed = float((fixed.logp - ring.log_prob(x)).abs().mean()) / (2 * LN2)
    assert err_fixed < 0.05 * err_plain and err_fixed < (2e-5 if sde_cls is VESDE else 2e-6), (err_plain, err_fixed)


def test_the_mixture_supplies_its_exact_score_divergence(gm16):
    """``score_fn.divergence`` (the Laplacian of log p_t in one pass) equals autograd's exact trace of the score to
    1e-10, and a likelihood that uses it equals one through D vector–Jacobian products to 1e-9 nats."""
    sde = VPSDE()
    f = gm16.score_fn(sde)
    x = gm16.sample(64, generator=torch.Generator().manual_seed(4), dtype=F64).requires_grad_(True)
    t = torch.rand(64, generator=torch.Generator().manual_seed(5), dtype=F64).clamp_min(1e-3)
    assert torch.allclose(f.divergence(x, t), divergence(f(x, t), x), atol=1e-10, rtol=1e-10)
    x = x.detach()[:32]
    hooked = log_likelihood(f, sde, x)
    autograd = log_likelihood(lambda y, s: f(y, s), sde, x)  # a plain callable: no divergence hook
    assert float((hooked.logp - autograd.logp).abs().max()) < 1e-9


def test_log_likelihood_runs_under_inference_mode_and_no_grad(ring):
    sde = VPSDE()
    x = ring.sample(8, generator=torch.Generator().manual_seed(0), dtype=F64)
    ref = log_likelihood(ring.score_fn(sde), sde, x).logp
    with torch.inference_mode():
        xi = x.clone()
        inf = log_likelihood(ring.score_fn(sde), sde, xi).logp
    with torch.no_grad():
        ng = log_likelihood(ring.score_fn(sde), sde, x).logp
    torch.testing.assert_close(inf, ref)
    torch.testing.assert_close(ng, ref)


# ---- bits/dim offsets ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "transform, offset",
    [
        (DataTransform.discrete(256, 0.0, 1.0), 8.0),  # 8-bit to [0, 1]: (x·255 + u)/256
        (DataTransform.discrete(256, -1.0, 1.0), 7.0),  # then to [-1, 1]: the scale 2 takes one bit
        (DataTransform.discrete(17, -1.0, 1.0), math.log2(17) - 1),  # scikit-learn digits
        (DataTransform.discrete(2, 0.0, 1.0), 1.0),  # binary
        (DataTransform.identity(), 0.0),  # continuous data used as is
        (DataTransform(scale=4.0), -2.0),  # continuous data scaled by 4: density per raw unit is 4× larger
    ],
)
def test_bpd_offsets_by_hand(transform, offset):
    assert transform.bpd_offset == pytest.approx(offset, abs=1e-12)


def test_offset_turns_a_dequantized_density_into_a_bound_on_discrete_bits():
    """For 2-D data with 16 levels mapped to [-1, 1] and a known model density p_z, the exact discrete probability
    P(raw) = ∫_cell p_z dz (by quadrature) and the dequantized estimate E_u[-log2 p_z]/D + offset must satisfy
    Jensen's bound and agree closely (the density is smooth on the scale of one cell)."""
    covs = torch.tensor([[[0.1, 0.02], [0.02, 0.3]], [[0.25, 0.0], [0.0, 0.15]]], dtype=F64)
    model = GaussianMixture([0.6, 0.4], [[-0.3, 0.2], [0.4, -0.1]], covs)
    tf = DataTransform.discrete(16, -1.0, 1.0)
    raw = torch.tensor([[5, 9], [10, 7], [8, 8], [3, 12]])
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([model.log_prob(tf.forward(raw.double(), generator=g)) for _ in range(4000)])  # (R, N)
    estimate = nats_to_bits_per_dim(draws.mean(0), 2, tf.bpd_offset)
    # Exact P(raw) by a 200 × 200 midpoint rule over each cell of side 2/16 in z-space.
    m = 200
    u = (torch.arange(m, dtype=F64) + 0.5) / m
    uu = torch.stack(torch.meshgrid(u, u, indexing="ij"), -1).reshape(-1, 2)
    exact = []
    for r in raw.double():
        z = tf.scale * (r + uu) / tf.levels + tf.shift
        cell = (tf.scale / tf.levels) ** 2
        exact.append(torch.logsumexp(model.log_prob(z), 0) - math.log(m * m) + math.log(cell))
    exact_bpd = -torch.stack(exact) / (2 * LN2)
    assert bool((estimate >= exact_bpd - 2e-3).all())  # the bound (up to the Monte Carlo error of 4000 draws)
    assert float((estimate - exact_bpd).abs().max()) < 0.05


def test_bits_per_dim_end_to_end_with_repeats_and_standard_error(ring):
    sde = VPSDE()
    tf = DataTransform(scale=0.5)  # continuous raw data, twice the model's scale
    raw = 2 * ring.sample(40, generator=torch.Generator().manual_seed(2), dtype=F64)
    out = bits_per_dim(ring.score_fn(sde), sde, raw, tf, repeats=3)
    assert out.bpd.shape == (1, 40)  # continuous data: one draw is all there is
    exact = -(ring.log_prob(raw * 0.5) + 2 * math.log(0.5)) / (2 * LN2)  # log p_raw = log p_z + D log(scale)
    assert float((out.per_sample - exact).abs().mean()) < 2e-3  # includes the VP prior mismatch
    assert out.stderr == pytest.approx(float(out.per_sample.std() / math.sqrt(40)))
    disc = DataTransform.discrete(16, -1.0, 1.0)
    raw16 = disc.inverse(ring.sample(12, generator=torch.Generator().manual_seed(3), dtype=F64) * 0.4)
    two = bits_per_dim(ring.score_fn(sde), sde, raw16, disc, repeats=2, generator=torch.Generator().manual_seed(0))
    assert two.bpd.shape == (2, 12) and not torch.equal(two.bpd[0], two.bpd[1])  # redrawn dequantization noise
    assert str(two).endswith("(N=12, 2 draws)")


# ---- latent space -------------------------------------------------------------------------------------------------
def test_decode_inverts_encode_at_tight_tolerance(gm16):
    sde = VPSDE()
    x = gm16.sample(16, generator=torch.Generator().manual_seed(7), dtype=F64)
    s = gm16.score_fn(sde)
    z = encode(s, sde, x, rtol=1e-8, atol=1e-8)
    back = decode(s, sde, z, rtol=1e-8, atol=1e-8)
    assert float(((back - x).norm(dim=1) / x.norm(dim=1)).max()) < 1e-4
    # The latents of data are prior draws: ‖z‖² / D ≈ 1 (chi-square with 16 × 16 degrees of freedom in all).
    assert abs(float(z.pow(2).mean()) - 1.0) < 0.35


def test_per_sample_encode_and_decode_do_not_depend_on_the_batch(gm16):
    """With a step size per sample the latents of 20 points are the same alone as inside a batch of 64 (to 1e-12),
    agree with torchdiffeq's batch solve to the tolerance, and decode back."""
    sde = VPSDE()
    s = gm16.score_fn(sde)
    x = gm16.sample(64, generator=torch.Generator().manual_seed(17), dtype=F64)
    kw = dict(rtol=1e-7, atol=1e-7, backend="per_sample")
    z = encode(s, sde, x, **kw)
    alone = torch.cat([encode(s, sde, x[i : i + 1], **kw) for i in range(20)])
    assert float((alone - z[:20]).abs().max()) < 1e-12
    ref = encode(s, sde, x, rtol=1e-7, atol=1e-7)
    assert float(((z - ref).norm(dim=1) / ref.norm(dim=1)).max()) < 1e-4
    back = decode(s, sde, z, **kw)
    assert float(((back - x).norm(dim=1) / x.norm(dim=1)).max()) < 1e-3
    with pytest.raises(ValueError, match="per_sample"):
        encode(s, sde, x, method="rk4", backend="per_sample")


def test_interpolation_endpoints_reproduce_the_inputs(gm16):
    sde = VPSDE()
    x = gm16.sample(6, generator=torch.Generator().manual_seed(8), dtype=F64)
    for kind in ("slerp", "lerp"):
        out = interpolate(gm16.score_fn(sde), sde, x[:3], x[3:], 5, kind=kind, rtol=1e-8, atol=1e-8)
        assert out.x.shape == (3, 5, 16) and out.z.shape == (3, 5, 16)
        torch.testing.assert_close(out.x[:, 0], x[:3], rtol=0, atol=1e-5)
        torch.testing.assert_close(out.x[:, -1], x[3:], rtol=0, atol=1e-5)


def test_slerp_and_lerp_geometry():
    g = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(4, 3, 8, 8, generator=g, dtype=F64), torch.randn(4, 3, 8, 8, generator=g, dtype=F64)
    w = torch.tensor([0.0, 0.25, 0.5, 1.0], dtype=F64)
    s, l = slerp(z0, z1, w), lerp(z0, z1, w)
    for path in (s, l):
        torch.testing.assert_close(path[:, 0], z0)
        torch.testing.assert_close(path[:, -1], z1)
    torch.testing.assert_close(l[:, 2], (z0 + z1) / 2)
    # Two equal-norm vectors: slerp stays on their sphere, lerp cuts inside it.
    a = torch.tensor([[3.0, 0.0]], dtype=F64)
    b = torch.tensor([[0.0, 3.0]], dtype=F64)
    torch.testing.assert_close(slerp(a, b, w).norm(dim=-1), torch.full((1, 4), 3.0, dtype=F64))
    assert float(lerp(a, b, w)[0, 2].norm()) == pytest.approx(3 / math.sqrt(2))
    torch.testing.assert_close(slerp(a, a, w), a[:, None].expand(1, 4, 2))  # parallel: no division by sin 0


def test_temperature_scales_the_latents(ring):
    sde = VPSDE()
    x = ring.sample(4, generator=torch.Generator().manual_seed(9), dtype=F64)
    hot = interpolate(ring.score_fn(sde), sde, x[:2], x[2:], 3, temperature=0.5)
    cold = interpolate(ring.score_fn(sde), sde, x[:2], x[2:], 3, z0=hot.z[:, 0] / 0.5, z1=hot.z[:, -1] / 0.5)
    torch.testing.assert_close(hot.z, 0.5 * cold.z)


def test_gradcheck_through_encode():
    sde = VPSDE()
    mix = GaussianMixture.ring(k=3)
    x = mix.sample(2, generator=torch.Generator().manual_seed(0), dtype=F64).requires_grad_(True)
    s = mix.score_fn(sde)
    # The fixed-step solve is a smooth map of x, so its derivative must match finite differences exactly.
    assert torch.autograd.gradcheck(lambda a: encode(s, sde, a, method="rk4", method_options={"step_size": 0.05}), (x,))
    # The adaptive solve's gradient (autograd through dopri5's steps) agrees with it to the solvers' accuracy.
    fixed = torch.autograd.functional.jacobian(lambda a: encode(s, sde, a, method="rk4", method_options={"step_size": 0.01}), x)
    adaptive = torch.autograd.functional.jacobian(lambda a: encode(s, sde, a, rtol=1e-8, atol=1e-8), x)
    torch.testing.assert_close(adaptive, fixed, rtol=1e-3, atol=1e-4)


# ---- errors -------------------------------------------------------------------------------------------------------
def test_bad_arguments_are_explained(ring):
    sde = VPSDE()
    s = ring.score_fn(sde)
    x = ring.sample(4, dtype=F64)
    with pytest.raises(ValueError, match=r"t_eps must lie in \[0, T\)"):
        log_likelihood(s, sde, x, t_eps=1.0)
    with pytest.raises(ValueError, match="unknown trace 'hutch'; use 'exact'"):
        log_likelihood(s, sde, x, trace="hutch")
    with pytest.raises(ValueError, match="unknown probe 'uniform'"):
        log_likelihood(s, sde, x, trace="hutchinson", probe="uniform")
    with pytest.raises(ValueError, match="unknown backend 'scipy'; use 'per_sample'"):
        log_likelihood(s, sde, x, backend="scipy")
    with pytest.raises(ValueError, match="method_options are torchdiffeq's; pass backend='torchdiffeq'"):
        log_likelihood(s, sde, x, method_options={"first_step": 1e-3})
    with pytest.raises(ValueError, match="batch dim first"):
        log_likelihood(s, sde, x[0])
    with pytest.raises(ValueError, match="at least 2 points"):
        interpolate(s, sde, x[:2], x[2:], 1)
    with pytest.raises(ValueError, match="same shape"):
        interpolate(s, sde, x[:2], x[1:], 3)
    with pytest.raises(ValueError, match="unknown interpolation 'cubic'"):
        interpolate(s, sde, x[:2], x[2:], 3, kind="cubic")
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        bits_per_dim(s, sde, x, DataTransform.identity(), repeats=0)
    with pytest.raises(ValueError, match=r"values in \[0, 1\)"):
        DataTransform.discrete(16).forward(torch.zeros(2, 2), u=torch.ones(2, 2))


def test_log_likelihood_refuses_nan_points_and_unknown_methods_before_solving():
    import math

    from scoresde import VPSDE, GaussianMixture, log_likelihood

    sde, ring = VPSDE(), GaussianMixture.ring()
    calls = []

    def score(x, t):
        calls.append(1)
        return ring.score(x, t, sde)

    with pytest.raises(ValueError, match="1 NaN or infinite"):
        log_likelihood(score, sde, torch.tensor([[0.0, 1.0], [math.inf, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="unknown ODE method 'rk45'"):
        log_likelihood(score, sde, torch.zeros(2, 2, dtype=torch.float64), method="rk45")
    assert not calls


@pytest.mark.parametrize("sde_id", ["discrete", "cosine"])
def test_likelihood_on_the_discrete_and_cosine_schedules_matches_the_exact_density(sde_id, ring):
    """The probability-flow ODE's log-density equals the exact log p at the integration's start time t_eps (the
    discrete schedule's interpolant is extrapolated below t_0 = 1/N, where its sigma is ~6e-3 at t_eps = 1e-5)."""
    from scoresde import CosineVPSDE, DiscreteVPSDE

    sde = DiscreteVPSDE.linear() if sde_id == "discrete" else CosineVPSDE()
    x = ring.sample(48, generator=torch.Generator().manual_seed(0), dtype=F64)
    res = log_likelihood(ring.score_fn(sde), sde, x)
    assert _bpd_error(ring, sde, x, res, reference_t=1e-5) < 1e-3
